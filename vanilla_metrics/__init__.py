"""sacreBLEU and chrF as `evaluate` modules, offline: the modules in this package's sacrebleu/ and chrf/ folders wrap
the `sacrebleu` package (the Hub's `evaluate-metric/sacrebleu` and `chrf` need the network). eval.py scores with
them, and so does train.py's evaluation with --predict_with_generate."""

from pathlib import Path
from typing import NamedTuple

from sacrebleu.metrics import BLEU, CHRF

from vanilla_cli import UsageError, first_line

METRICS_DIR = Path(__file__).resolve().parent
METRICS = {"sacrebleu": BLEU, "chrf": CHRF}  # evaluate module -> the sacrebleu metric it runs
BLEU_TOKENIZERS = list(BLEU.TOKENIZERS)  # the --bleu_tokenize choices
# The ISO 639-3 codes (FLORES' zho_Hans, jpn_Jpan, kor_Hang) of the languages sacreBLEU has tokenizers for.
ISO_639_1 = {"zho": "zh", "jpn": "ja", "kor": "ko"}


class Metric(NamedTuple):
    """A loaded `evaluate` module and the arguments it computes with."""

    module: object
    options: dict


def bleu_tokenizer(target_lang: str | None, tokenize: str | None = None) -> str:
    """BLEU's tokenizer: `tokenize` if given, else sacreBLEU's own choice for the target language (zh for Chinese,
    ja-mecab for Japanese, ko-mecab for Korean, as `sacrebleu -l xx-zh` picks; 13a for the rest), read from its
    primary subtag (zh-CN, zh_Hans and zho_Hans are Chinese)."""
    if tokenize is not None:
        return tokenize
    primary = (target_lang or "").replace("_", "-").split("-")[0].lower()
    return BLEU._TOKENIZER_MAP.get(ISO_639_1.get(primary, primary), BLEU.TOKENIZER_DEFAULT)


def check_bleu_tokenizer(tokenize: str, target_lang: str | None, given: bool) -> None:
    """UsageError, before anything is translated, for a BLEU tokenizer sacreBLEU lacks or cannot build here (ja-mecab
    and ko-mecab need sacrebleu's extras, the spm ones download their model)."""
    if tokenize not in BLEU_TOKENIZERS:
        raise UsageError(f"--bleu_tokenize {tokenize!r}: expected one of {', '.join(BLEU_TOKENIZERS)}")
    try:
        BLEU(tokenize=tokenize)
    except Exception as error:  # ImportError for MeCab, network errors for spm, ...
        extra = {"ja-mecab": "ja", "ko-mecab": "ko"}.get(tokenize)
        install = f'install it with `pip install "sacrebleu[{extra}]"` or ' if extra else ""
        if given:
            why = f"cannot be loaded ({first_line(error)}); {install}name another"
            raise UsageError(f"--bleu_tokenize {tokenize}: {why}") from None
        raise UsageError(
            f"BLEU tokenizes target language {target_lang!r} with {tokenize!r} (sacreBLEU's choice), which cannot be "
            f"loaded ({first_line(error)}); {install}name another tokenizer with --bleu_tokenize (e.g. char)"
        ) from None


def load_metrics(hub_metrics: bool = False, target_lang: str | None = None, bleu_tokenize: str | None = None) -> dict:
    """sacreBLEU and chrF as `evaluate` modules (the local ones unless the Hub's are asked for), BLEU tokenizing as
    sacreBLEU would for `target_lang` unless `bleu_tokenize` names a tokenizer."""
    import evaluate

    tokenize = bleu_tokenizer(target_lang, bleu_tokenize)
    check_bleu_tokenizer(tokenize, target_lang, given=bleu_tokenize is not None)
    options = {"sacrebleu": {"tokenize": tokenize}, "chrf": {}}
    metrics = {}
    for name in METRICS:
        path = name if hub_metrics else str(METRICS_DIR / name)
        try:
            metrics[name] = Metric(evaluate.load(path), options[name])
        except Exception as error:  # evaluate raises FileNotFoundError, ConnectionError, ... when the Hub is away
            hint = "; leave out --hub_metrics to use the local copy" if hub_metrics else ""
            raise UsageError(f"cannot load the metric {path!r} ({error}){hint}") from None
    return metrics


def score(metrics: dict, hypotheses: list[str], references: list[str]) -> dict:
    """Each metric's result on the detokenized hypotheses, with sacreBLEU's signature."""
    results = {}
    for name, (module, options) in metrics.items():
        one_each = [[reference] for reference in references]
        result = module.compute(predictions=hypotheses, references=one_each, **options)
        if "signature" not in result:
            # The Hub metrics run sacrebleu with these settings but do not return the signature; it is this one.
            result["signature"] = str(METRICS[name](references=[references], **options).get_signature())
        results[name] = result
    return results
