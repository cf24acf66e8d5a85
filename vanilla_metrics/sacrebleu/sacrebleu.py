"""Corpus BLEU from the `sacrebleu` package as an offline `evaluate` metric, with the reproducibility signature.

Same inputs, arguments and outputs as the Hub's `evaluate-metric/sacrebleu`, plus `signature`; load it by path:
`evaluate.load("vanilla_metrics/sacrebleu")`.
"""

import datasets
import evaluate
from sacrebleu.metrics import BLEU

_CITATION = """\
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    publisher = "Association for Computational Linguistics",
    url = "https://www.aclweb.org/anthology/W18-6319",
    pages = "186--191",
}
"""

_DESCRIPTION = """\
BLEU (Papineni et al. 2002) computed by sacreBLEU on detokenized text with its own tokenization (13a by default),
so that scores are comparable across papers; the signature records every setting that changes the score.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of detokenized hypotheses, one string per segment.
    references: one reference string per prediction, or a list of references per prediction (all of one length).
    smooth_method, smooth_value, lowercase, tokenize, use_effective_order: as `sacrebleu.metrics.BLEU`.
Returns:
    score, counts, totals, precisions, bp, sys_len, ref_len: as the Hub metric;
    signature: sacreBLEU's signature string, e.g. "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0".
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Sacrebleu(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            homepage="https://github.com/mjpost/sacreBLEU",
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
            codebase_urls=["https://github.com/mjpost/sacreBLEU"],
            reference_urls=["https://www.aclweb.org/anthology/W18-6319"],
        )

    def _compute(
        self,
        predictions,
        references,
        smooth_method="exp",
        smooth_value=None,
        lowercase=False,
        tokenize=None,
        use_effective_order=False,
    ) -> dict:
        reference_streams = _reference_streams(references)
        bleu = BLEU(
            lowercase=lowercase,
            tokenize=tokenize,
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            effective_order=use_effective_order,
        )
        output = bleu.corpus_score(predictions, reference_streams)
        return {
            "score": output.score,
            "counts": output.counts,
            "totals": output.totals,
            "precisions": output.precisions,
            "bp": output.bp,
            "sys_len": output.sys_len,
            "ref_len": output.ref_len,
            "signature": str(bleu.get_signature()),
        }


def _reference_streams(references) -> list[list[str]]:
    """sacreBLEU takes one stream per reference set: [[ref_1 of segment 1, ref_1 of segment 2, ...], ...]."""
    if isinstance(references[0], str):
        return [list(references)]
    per_prediction = len(references[0])
    if any(len(refs) != per_prediction for refs in references):
        raise ValueError(f"every prediction needs the same number of references ({per_prediction})")
    return [[refs[i] for refs in references] for i in range(per_prediction)]
