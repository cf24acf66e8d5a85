"""sacreBLEU and chrF as `evaluate` modules, offline: the modules in this package's sacrebleu/ and chrf/ folders wrap
the `sacrebleu` package (the Hub's `evaluate-metric/sacrebleu` and `chrf` need the network). eval.py scores with
them, and so does train.py's evaluation with --predict_with_generate."""

from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF

from vanilla_cli import UsageError

METRICS_DIR = Path(__file__).resolve().parent
METRICS = {"sacrebleu": BLEU, "chrf": CHRF}  # evaluate module -> the sacrebleu metric it runs


def load_metrics(hub_metrics: bool = False) -> dict:
    """sacreBLEU and chrF as `evaluate` modules: the local ones unless the Hub's are asked for."""
    import evaluate

    metrics = {}
    for name in METRICS:
        path = name if hub_metrics else str(METRICS_DIR / name)
        try:
            metrics[name] = evaluate.load(path)
        except Exception as error:  # evaluate raises FileNotFoundError, ConnectionError, ... when the Hub is away
            hint = "; leave out --hub_metrics to use the local copy" if hub_metrics else ""
            raise UsageError(f"cannot load the metric {path!r} ({error}){hint}") from None
    return metrics


def score(metrics: dict, hypotheses: list[str], references: list[str]) -> dict:
    """Each metric's result on the detokenized hypotheses, with sacreBLEU's signature."""
    results = {}
    for name, metric in metrics.items():
        result = metric.compute(predictions=hypotheses, references=[[reference] for reference in references])
        if "signature" not in result:
            # The Hub metrics run sacrebleu with its defaults but do not return the signature; it is this one.
            result["signature"] = str(METRICS[name](references=[references]).get_signature())
        results[name] = result
    return results
