"""The model card of a saved model folder, and what a push to the Hub leaves out of that folder.

The card is huggingface_hub's `ModelCard`: metadata (languages, license, `pipeline_tag: translation`, datasets, a
model-index with the BLEU and chrF of eval.py's results files) above a text that describes the saved shape and
shows how to load the model, whose code ships beside its weights (`trust_remote_code=True`).
"""

import hashlib
import os
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError

from vanilla_cli import eval_command
from vanilla_corpus import DATA_FORMATS
from vanilla_files import CARD, DATA_RECORD, RESUME_FILES, read_json
from vanilla_translation import MAX_LENGTH_OFFSET, saved_decoding

CARD_TAG = "vanilla-transformer"  # marks a card written here, which eval.py may refresh
TRAIN_RESULTS = "all_results.json"  # train.py's metrics, in Trainer.save_metrics' format
EVAL_RESULTS = "eval_results_*.json"  # eval.py's report per split
PREDICTIONS = "predictions_*.txt"  # and its hypotheses
REPORT_FILES = (EVAL_RESULTS, PREDICTIONS)
LICENSE = "apache-2.0"  # the code's (pyproject.toml); a model inherits its training data's terms as well
SHAPE = ("d_model", "num_heads", "d_ff", "encoder_layers", "decoder_layers", "vocab_size")
EMBEDDED_DATA = "the embedded task (English -> German number words)"
# What a Hub request raises when it cannot be made or is refused: the bases of HfHubHTTPError, its HTTP library's
# HTTPError (httpx's, or httpx2's from huggingface_hub 2), which that library's connection errors derive from too, and
# OSError, which OfflineModeIsEnabled (HF_HUB_OFFLINE=1) derives from.
HUB_ERRORS = HfHubHTTPError.__bases__
# Left out of every push: Trainer's resume state in a checkpoint (optimizer, scheduler, RNG, log, train.py's loss
# sum and batching), the data record (local absolute paths), hidden temporary files, and every subfolder (the run's
# checkpoints, averaged models, the model kept by --save_at_seconds, CTranslate2 conversions, logs): a push is one
# model.
NOT_PUSHED = [*RESUME_FILES, DATA_RECORD, "*/*", ".*", "_*"]

# What the card says of a beam search's length penalty, after its alpha.
ALPHA_NOTE = """ (sec. 6.1's alpha; `generate()`
divides a hypothesis' log-probability by length^alpha, where the paper's GNMT penalty is ((5 + length) / 6)^alpha)"""
TEMPLATE = """---
{{ card_data }}
---
# Transformer {{ source_lang }} -> {{ target_lang }}

The encoder-decoder Transformer of *Attention Is All You Need* (Vaswani et al., 2017), {{ shape }},
trained with `train.py` on {{ data }}.
Decoding defaults (generation_config.json): {{ decoding }}.
{% if rows %}
| metric | value |
|---|---|
{% for name, value in rows %}| {{ name }} | {{ value }} |
{% endfor %}{% endif %}
## Usage

The model's code (configuration_vanilla.py, modeling_vanilla.py) ships with its weights, so it loads with
`trust_remote_code=True`:

```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{{ repo_id }}", trust_remote_code=True)
model = AutoModelForSeq2SeqLM.from_pretrained("{{ repo_id }}", trust_remote_code=True)
inputs = tokenizer(["{{ example }}"], return_tensors="pt")
print(tokenizer.batch_decode(model.generate(**inputs), skip_special_tokens=True))
```

{% if embedded %}Translate with vanilla-transformer's eval.py: `{{ command }}`.
{% else %}Score it with vanilla-transformer's eval.py (BLEU and chrF with sacreBLEU): `{{ command }}`{% if own_data %},
`test.jsonl` holding JSON lines `{"translation": {"{{ source_lang }}": "...", "{{ target_lang }}": "..."}}`{% endif %}.
{% endif %}"""
REPO_ID = re.compile(r'AutoModelForSeq2SeqLM\.from_pretrained\("([^"]+)"')
# The last line of a card written here: the SHA-256 of the text above it, in a comment the Hub does not show. The card
# is as written while its text keeps that digest, whatever reports came beside it since; an edit makes it the user's.
CARD_DIGEST = "<!-- SHA-256 of the card above, as train.py or eval.py wrote it: {} -->"
CARD_DIGEST_LINE = re.compile(r"\n" + re.escape(CARD_DIGEST).replace(r"\{\}", "([0-9a-f]{64})") + r"\s*\Z")


def card_text(card: ModelCard) -> str:
    """The card as README.md holds it: its text, then the line with that text's SHA-256 (CARD_DIGEST)."""
    text = str(card).rstrip("\n")
    return f"{text}\n{CARD_DIGEST.format(text_sha256(text))}\n"


def is_card_as_written(text: str) -> bool | None:
    """Whether a card's text is the one card_text wrote (its digest line holds its SHA-256); None for a card without
    that line (written before cards carried it, or the line removed)."""
    found = CARD_DIGEST_LINE.search(text)
    return None if found is None else text_sha256(text[: found.start()]) == found.group(1)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def described_shape(config: dict, presets: dict[str, dict]) -> str:
    """The shape saved, not the flags asked for (a resumed run takes its checkpoint's): a preset's name if it is one."""
    shape = ", ".join(f"{name} {config[name]}" for name in SHAPE)
    named = [name for name, values in presets.items() if all(config.get(key) == value for key, value in values.items())]
    return f"preset `{named[0]}` ({shape})" if named else f"a custom shape ({shape})"


def is_local(data: str) -> bool:
    """Whether a data source is a local file or folder (train.py records those by absolute path), not a Hub name."""
    return os.path.isabs(data) or os.path.exists(data) or Path(data).suffix.lower() in DATA_FORMATS


def dataset_of(data: str) -> str:
    """A dataset id for the card: a Hub dataset's name, a local file's or folder's name (never its path)."""
    return Path(data).name if is_local(data) else data


def eval_results(reports: list[dict]) -> list[EvalResult]:
    """BLEU and chrF of each eval.py report, as model-index entries."""
    results = []
    for report in reports:
        dataset = (
            "embedded-number-words" if report["data"] == "the embedded number task" else dataset_of(report["data"])
        )
        for metric, name, signature in (("bleu", "BLEU", "sacrebleu_signature"), ("chrf", "chrF", "chrf_signature")):
            results.append(
                EvalResult(
                    task_type="translation",
                    task_name="Translation",
                    dataset_type=dataset,
                    dataset_name=dataset,
                    dataset_config=report.get("dataset_config"),
                    dataset_split=report["split"],
                    metric_type=metric,
                    metric_name=name,
                    metric_value=round(report[metric], 2),
                    metric_config=report[signature],
                )
            )
    return results


def model_card(
    config: dict,
    generation: dict,
    record: dict,
    metrics: dict,
    reports: list[dict],
    repo_id: str,
    presets: dict[str, dict],
) -> ModelCard:
    """The card of a model: its shape (`config`), decoding defaults (`generation`, its generation_config), data
    (`record`, train.py's data record), train.py's `metrics`, eval.py's `reports`, and a usage snippet that loads it
    from `repo_id`."""
    if record["embedded_task"]:
        data, datasets = EMBEDDED_DATA, None
    elif record["dataset_name"] and is_local(record["dataset_name"]):
        data, datasets = f"the local dataset `{dataset_of(record['dataset_name'])}`", None
    elif record["dataset_name"]:
        data, datasets = record["dataset_name"], [record["dataset_name"]]
    else:
        data, datasets = dataset_of(record["train_file"] or "local data files"), None
    if record.get("max_train_samples"):  # absent from older records
        data += f" (at most the first {record['max_train_samples']:,} pairs of its training split)"
    results = eval_results(reports)
    card_data = ModelCardData(
        language=[record["source_lang"], record["target_lang"]],
        license=LICENSE,
        library_name="transformers",
        pipeline_tag="translation",
        tags=["translation", CARD_TAG, "custom_code"],
        datasets=datasets,
        metrics=["bleu", "chrf"] if results else None,
        model_name=repo_id if results else None,
        eval_results=results or None,
    )
    rows = [(name, f"{value:.4g}") for name, value in sorted(metrics.items())]  # as all_results.json holds them
    for report in reports:  # its BLEU and chrF, named with the decoding that produced them
        decoding = report_decoding(report)
        rows += [
            (f"{result.metric_name} ({result.dataset_name}, {result.dataset_split}{decoding})", result.metric_value)
            for result in eval_results([report])
        ]
    return ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        source_lang=record["source_lang"],
        target_lang=record["target_lang"],
        shape=described_shape(config, presets),
        data=data,
        rows=rows,
        decoding=described_decoding(generation),
        repo_id=repo_id,
        example="twenty-three" if record["embedded_task"] else f"A sentence in {record['source_lang']}.",
        embedded=record["embedded_task"],
        command=card_eval_command(record, repo_id),
        own_data=datasets is None,  # local data: the command reads the reader's own test file
    )


def described_decoding(generation: dict) -> str:
    """The decoding defaults a generation_config holds, as eval.py takes them when no flag says otherwise."""
    decoding = saved_decoding(generation)
    if decoding["num_beams"] == 1:
        return "greedy search"
    return f"beam size {decoding['num_beams']}, length penalty alpha {decoding['length_penalty']}{ALPHA_NOTE}"


def report_decoding(report: dict) -> str:
    """How an eval.py report decoded, as its card row says: "; beam 4, alpha 0.6, transformers float32" (the beam
    search and engine the report holds, the output limit where it is not sec. 6.1's), or "" for a report without it."""
    decoding = report.get("decoding")
    if not isinstance(decoding, dict) or "engine" not in report:
        return ""
    if decoding["num_beams"] == 1:  # greedy search ranks no hypotheses: no length penalty applies
        words = ["greedy"]
    else:
        words = [f"beam {decoding['num_beams']}", f"alpha {decoding['length_penalty']}"]
    if decoding.get("max_length_offset", MAX_LENGTH_OFFSET) != MAX_LENGTH_OFFSET:
        words.append(f"max length input + {decoding['max_length_offset']}")
    if report["engine"] == "ctranslate2":
        words.append(f"CTranslate2 {report['quantization']}")
    else:
        words.append(f"transformers {report['dtype']}")
    return "; " + ", ".join(words)


def card_eval_command(record: dict, repo_id: str) -> str:
    """The card's eval.py command. The Hub holds no data record (NOT_PUSHED), so it names the data: a Hub dataset by
    its id, local data by a test file of the reader's own; the embedded task's model is shown translating."""
    if record["embedded_task"]:
        return f'echo "twenty-three" | {eval_command("translate", "--model", repo_id)}'
    if record["dataset_name"] and not is_local(record["dataset_name"]):
        data = ["--dataset_name", record["dataset_name"]]
        if record.get("dataset_config_name"):
            data += ["--dataset_config_name", record["dataset_config_name"]]
    else:
        data = ["--test_file", "test.jsonl"]
    languages = ["--source_lang", record["source_lang"], "--target_lang", record["target_lang"]]
    return eval_command("--model", repo_id, *data, *languages)


def eval_reports(folder: Path) -> dict[Path, dict]:
    """eval.py's reports in a folder by path, in name order: the eval_results_*.json files that is_report takes."""
    reports = {path: read_json(path) for path in sorted(folder.glob(EVAL_RESULTS)) if path.is_file()}
    return {path: report for path, report in reports.items() if is_report(report)}


def is_report(report) -> bool:
    """Whether a file named like eval.py's report is one (another tool's eval_results_*.json is left out)."""
    keys = ("data", "split", "bleu", "chrf", "sacrebleu_signature", "chrf_signature")
    return isinstance(report, dict) and all(key in report for key in keys)


def folder_card(folder: Path, presets: dict[str, dict]) -> ModelCard | None:
    """The card of a model folder rebuilt from its files (config, data record, train.py's and eval.py's results),
    keeping the repo id its card names; None for a folder without a card written here (a checkpoint, another's)."""
    card_path = folder / CARD
    if not card_path.is_file() or not (folder / DATA_RECORD).is_file():
        return None
    try:
        old = ModelCard.load(card_path, ignore_metadata_errors=True)
    except UnicodeDecodeError:  # not a card written here (those are UTF-8)
        return None
    found = REPO_ID.search(old.text)
    if CARD_TAG not in (old.data.tags or []) or found is None:
        return None
    metrics = read_json(folder / TRAIN_RESULTS) or {}
    reports = list(eval_reports(folder).values())
    config, record = read_json(folder / "config.json"), read_json(folder / DATA_RECORD)
    generation = read_json(folder / "generation_config.json") or {}
    return model_card(config, generation, record, metrics, reports, found.group(1), presets)
