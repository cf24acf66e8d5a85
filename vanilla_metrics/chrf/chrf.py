"""chrF (Popovic 2015) from the `sacrebleu` package as an offline `evaluate` metric, with its signature.

Same inputs, arguments and outputs as the Hub's `evaluate-metric/chrf`, plus `signature`; load it by path:
`evaluate.load("vanilla_metrics/chrf")`.
"""

import datasets
import evaluate
from sacrebleu.metrics import CHRF

_CITATION = """\
@inproceedings{popovic-2015-chrf,
    title = "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
    author = "Popovi{\\'c}, Maja",
    booktitle = "Proceedings of the Tenth Workshop on Statistical Machine Translation",
    year = "2015",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/W15-3049",
    pages = "392--395",
}
"""

_DESCRIPTION = """\
chrF: the F-score (recall weighted by beta) of character n-grams, up to char_order, between hypotheses and
references; word_order=2 gives chrF++. Computed by sacreBLEU on detokenized text.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of detokenized hypotheses, one string per segment.
    references: one reference string per prediction, or a list of references per prediction (all of one length).
    char_order, word_order, beta, lowercase, whitespace, eps_smoothing: as `sacrebleu.metrics.CHRF`.
Returns:
    score, char_order, word_order, beta: as the Hub metric;
    signature: sacreBLEU's signature string, e.g. "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0".
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Chrf(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            homepage="https://github.com/mjpost/sacreBLEU#chrf--chrf",
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Sequence(datasets.Value("string", id="sequence"), id="references"),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Value("string", id="sequence"),
                    }
                ),
            ],
            codebase_urls=["https://github.com/mjpost/sacreBLEU#chrf--chrf"],
            reference_urls=["https://aclanthology.org/W15-3049"],
        )

    def _compute(
        self,
        predictions,
        references,
        char_order=CHRF.CHAR_ORDER,
        word_order=CHRF.WORD_ORDER,
        beta=CHRF.BETA,
        lowercase=False,
        whitespace=False,
        eps_smoothing=False,
    ) -> dict:
        reference_streams = _reference_streams(references)
        chrf = CHRF(
            char_order=char_order,
            word_order=word_order,
            beta=beta,
            lowercase=lowercase,
            whitespace=whitespace,
            eps_smoothing=eps_smoothing,
        )
        output = chrf.corpus_score(predictions, reference_streams)
        return {
            "score": output.score,
            "char_order": output.char_order,
            "word_order": output.word_order,
            "beta": output.beta,
            "signature": str(chrf.get_signature()),
        }


def _reference_streams(references) -> list[list[str]]:
    """sacreBLEU takes one stream per reference set: [[ref_1 of segment 1, ref_1 of segment 2, ...], ...]."""
    if isinstance(references[0], str):
        return [list(references)]
    per_prediction = len(references[0])
    if any(len(refs) != per_prediction for refs in references):
        raise ValueError(f"every prediction needs the same number of references ({per_prediction})")
    return [[refs[i] for refs in references] for i in range(per_prediction)]
