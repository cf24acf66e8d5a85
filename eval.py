"""The evaluation CLI: translate a test set with beam search (sec. 6.1) and score it with sacreBLEU and chrF.

    python eval.py --model out                      # the test data out/data_args.json records (train.py writes it)
    python eval.py --model out --test_file test.jsonl --source_lang en --target_lang de
    python eval.py --model out --average_last 5     # average the last 5 checkpoints first (sec. 6.1)
    python eval.py --model out --plot_attention "twenty-three"
    echo "twenty-three" | python eval.py translate --model out
    python eval.py --model out --engine ctranslate2 --quantization int8   # CTranslate2 (pip install .[fast])

The metrics are the local `evaluate` modules in metrics/ (offline); --hub_metrics loads the Hub's instead.
torch, the model classes, evaluate and matplotlib are imported where used, so that bad input fails fast.
"""

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sacrebleu.metrics import BLEU, CHRF
from transformers import HfArgumentParser

import vanilla_ctranslate2
from vanilla_data import (
    AVERAGED_MARKER,
    DATA_RECORD,
    DATA_RECORD_KEYS,
    DATA_SOURCE_ARGS,
    SPLITS,
    TRAINER_STATE,
    DataArguments,
    UsageError,
    checkpoint_folders,
    complete_checkpoints,
    exit_on_usage_error,
    load_raw_datasets,
    probe_write,
    sentences,
    write_file_atomically,
    write_folder_atomically,
    write_text_atomically,
)
from vanilla_hub import CARD, folder_card

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
METRICS = {"sacrebleu": BLEU, "chrf": CHRF}  # evaluate module -> the sacrebleu metric it runs


@dataclass
class EvalArguments:
    """The model to evaluate, the decoding settings (the model's generation_config unless given) and the outputs."""

    model: str = field(metadata={"help": "A model folder or Hub id with its tokenizer; with --average_last, a run."})
    split: str = field(default="test", metadata={"help": "The split to translate and score."})
    num_beams: int | None = field(
        default=None,
        metadata={"help": "Beam size (default: generation_config's; train.py saves 4, sec. 6.1)."},
    )
    length_penalty: float | None = field(
        default=None,
        metadata={"help": "Length penalty alpha (default: generation_config's; train.py saves 0.6, sec. 6.1)."},
    )
    max_length_offset: int = field(
        default=50, metadata={"help": "Maximum output length = input length + this, in tokens (sec. 6.1: 50)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Sentences per generate() call."})
    predictions_file: str | None = field(
        default=None, metadata={"help": "Hypotheses, one a line (default: predictions_<split>.txt beside the model)."}
    )
    results_file: str | None = field(
        default=None, metadata={"help": "The JSON report (default: eval_results_<split>.json beside the model)."}
    )
    hub_metrics: bool = field(
        default=False, metadata={"help": "Load sacrebleu and chrf from the Hub instead of the local metrics/."}
    )
    average_last: int | None = field(
        default=None, metadata={"help": "Average the weights of the last N checkpoint-* folders of --model first."}
    )
    averaged_model_dir: str | None = field(
        default=None, metadata={"help": "Where the averaged model is written (default: <run>/averaged-last-N)."}
    )
    plot_attention: str | None = field(
        default=None, metadata={"help": "Only plot the last layer's cross-attention while translating this sentence."}
    )
    attention_file: str | None = field(
        default=None, metadata={"help": "The attention plot (default: attention.png beside the model)."}
    )
    engine: Literal["transformers", "ctranslate2"] = field(
        default="transformers",
        metadata={"help": "transformers' generate(), or CTranslate2 (converted once, cached beside the model)."},
    )
    quantization: str | None = field(
        default=None,
        metadata={"help": "CTranslate2 weight and compute type: float32 (default), int8, int8_float32, bfloat16, ..."},
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = field(
        default=None, metadata={"help": "transformers engine: run the model in this dtype (default: as saved)."}
    )
    compile: bool = field(
        default=False, metadata={"help": "transformers engine: decode with a static cache and torch.compile."}
    )

    def __post_init__(self):
        for name in ("num_beams", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"--{name} ({getattr(self, name)}) must be at least 1")
        if self.split not in SPLITS:
            raise UsageError(f"--split {self.split!r}: expected one of {', '.join(SPLITS)}")


def output_path(given: str | None, model: str, default_name: str) -> Path:
    """The file the user named, else `default_name` in the model folder (or the current folder for a Hub id)."""
    if given:
        return Path(given)
    folder = Path(model)
    return (folder if folder.is_dir() else Path.cwd()) / default_name


def check_writable(path: Path, what: str) -> None:
    """UsageError unless a file `path` can be written: not a folder, and its folder (or the nearest existing folder
    above it) takes a real write (vanilla_data.probe_write)."""
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder; expected a file name")
    try:
        probe_write(path.parent)
    except NotADirectoryError as error:
        raise UsageError(f"{what} {path}: {error.filename} is a file, not a folder") from None
    except OSError as error:
        raise UsageError(f"{what} {path}: cannot write into {error.filename} ({error.strerror or error})") from None


def write_atomically(path: Path, text: str) -> None:
    """vanilla_data.write_text_atomically, a failure reported as a UsageError."""
    try:
        write_text_atomically(path, text)
    except OSError as error:
        raise UsageError(f"cannot write {path} ({error.strerror or error})") from None


def check_model_path(name: str) -> None:
    """Cheap checks of a local model folder (config and tokenizer present); Hub ids are checked when loaded."""
    folder = Path(name)
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise UsageError(f"{name}: not a model folder (no config.json)")
        if not any((folder / file).is_file() for file in TOKENIZER_FILES):
            raise UsageError(f"{name}: the model has no tokenizer (no {' or '.join(TOKENIZER_FILES)})")
    elif folder.exists():
        raise UsageError(f"{name}: not a model folder")
    elif folder.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:  # a Hub id is "name" or "org/name"
        raise UsageError(f"{name}: no such model folder")


def load_model_and_tokenizer(name: str, attn_implementation: str | None = None, dtype: str | None = None):
    """The model (on the best device, in eval mode) and its tokenizer; UsageError naming what is missing."""
    import torch
    from transformers import AutoTokenizer

    check_model_path(name)
    folder = Path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=True)
    except (OSError, ValueError) as error:
        if folder.is_dir() and not (folder / "tokenizer.json").is_file():
            raise UsageError(
                f"{name}: cannot load its tokenizer: no tokenizer.json, and tokenizer_config.json alone does not "
                f"hold a vocabulary ({first_line(error)})"
            ) from None
        where = "no such model folder, and no such Hub model available" if not folder.exists() else "cannot load it"
        raise UsageError(f"{name}: {where} ({first_line(error)})") from None
    model = load_model(name, attn_implementation, dtype)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def load_model(name: str | Path, attn_implementation: str | None = None, dtype: str | None = None) -> "PreTrainedModel":
    """AutoModelForSeq2SeqLM.from_pretrained, a missing or damaged weights file reported as a UsageError."""
    from safetensors import SafetensorError
    from transformers import AutoModelForSeq2SeqLM
    from transformers.utils import logging

    # Local weights load in a blink; the "Loading weights" bar would only stand between the user and an error line.
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        return AutoModelForSeq2SeqLM.from_pretrained(
            name, trust_remote_code=True, attn_implementation=attn_implementation, dtype=dtype or "auto"
        )
    except (OSError, ValueError, SafetensorError) as error:
        where = "no such model folder, and no such Hub model available" if not Path(name).exists() else "cannot load it"
        raise UsageError(f"{name}: {where} ({first_line(error)})") from None
    finally:
        if bars:
            logging.enable_progress_bar()


def first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def check_averaged_model_dir(output: Path) -> None:
    """Only a new folder, or one holding nothing but an earlier averaged model (its AVERAGED_MARKER), is written."""
    if not output.exists():
        check_writable(output / AVERAGED_MARKER, "--averaged_model_dir")
        return
    if not output.is_dir():
        raise UsageError(f"--averaged_model_dir {output} is a file; expected a new folder or an earlier averaged model")
    if not (output / AVERAGED_MARKER).is_file():
        raise UsageError(
            f"--averaged_model_dir {output} already exists and holds no averaged model written by eval.py (no "
            f"{AVERAGED_MARKER}); refusing to replace it: name a new folder with --averaged_model_dir"
        )
    folders = sorted(path.name for path in output.iterdir() if path.is_dir())
    if folders:
        raise UsageError(
            f"--averaged_model_dir {output} holds folders besides an averaged model ({', '.join(folders)}); "
            "refusing to replace it: name a new folder"
        )
    check_writable(output.parent / AVERAGED_MARKER, "--averaged_model_dir")


def check_engine_arguments(args: EvalArguments) -> None:
    """Each engine's own flags: --quantization for CTranslate2, --dtype and --compile for transformers."""
    if args.engine == "ctranslate2":
        if args.dtype is not None or args.compile:
            raise UsageError("--dtype and --compile apply to --engine transformers; CTranslate2 takes --quantization")
        if args.plot_attention is not None:
            raise UsageError("--plot_attention reads the attention weights of --engine transformers")
        vanilla_ctranslate2.import_ctranslate2()
    elif args.quantization is not None:
        raise UsageError("--quantization applies to --engine ctranslate2; the transformers engine takes --dtype")


def load_translation_model(args: EvalArguments):
    """The model that decodes: the torch model (in --dtype), or its CTranslate2 conversion, and the tokenizer."""
    if args.engine == "ctranslate2":
        check_model_path(args.model)
        model, tokenizer = vanilla_ctranslate2.load(args.model, args.quantization)
    else:
        model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
        if args.compile:
            compile_for_decoding(model)
    take_decoding_defaults(args, model.generation_config)
    return model, tokenizer


def take_decoding_defaults(args: EvalArguments, generation_config) -> None:
    """The model's saved decoding settings for every decoding flag the user left out (train.py saves sec. 6.1's)."""
    for name in ("num_beams", "length_penalty"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(generation_config, name))


def compile_for_decoding(model: "PreTrainedModel") -> None:
    """--compile: torch.compile the forward that every decoding step calls (with COMPILED_DECODING's static cache).

    Compiled here rather than by generate()'s auto-compilation, which transformers applies to greedy search and
    sampling but not to beam search."""
    import torch

    model.forward = torch.compile(model.forward)


# generate() arguments for --compile: fixed-size key/value buffers, so each step has the same shapes.
COMPILED_DECODING = {"cache_implementation": "static", "disable_compile": True}


def average_checkpoints(run: Path, last: int, output: Path) -> Path:
    """Sec. 6.1: "for the base models, we used a single model obtained by averaging the last 5 checkpoints".

    Writes the averaged model (with the newest checkpoint's config, tokenizer and generation config) to `output`,
    with AVERAGED_MARKER (the run and the checkpoints averaged) and a copy of the run's DATA_RECORD.
    """
    import torch

    if last < 1:
        raise UsageError(f"--average_last ({last}) must be a positive number of checkpoints")
    if not run.is_dir():
        raise UsageError(f"{run}: no such run folder")
    check_averaged_model_dir(output)
    checkpoints = complete_checkpoints(run)
    if len(checkpoints) < last:
        incomplete = sorted(path.name for path in checkpoint_folders(run) if path not in checkpoints)
        skipped = f" (skipped, incomplete: {', '.join(incomplete)})" if incomplete else ""
        raise UsageError(f"--average_last {last}: {run} has {len(checkpoints)} complete checkpoint-* folders{skipped}")
    chosen = checkpoints[-last:]
    model, tokenizer = load_model_and_tokenizer(str(chosen[-1]))
    # Sum in float64 so that averaging many checkpoints loses nothing to rounding.
    totals = {
        name: tensor.to(torch.float64, copy=True)
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point()
    }
    for checkpoint in chosen[:-1]:
        other = {
            name: tensor for name, tensor in load_model(checkpoint).state_dict().items() if tensor.is_floating_point()
        }
        unshared = sorted(set(other) ^ set(totals))
        if unshared:
            holder = checkpoint if unshared[0] in other else chosen[-1]
            raise UsageError(f"cannot average {checkpoint} with {chosen[-1]}: only {holder} has {unshared[0]}")
        for name, total in totals.items():
            if other[name].shape != total.shape:
                raise UsageError(
                    f"cannot average {checkpoint} with {chosen[-1]}: {name} has shape {tuple(other[name].shape)} "
                    f"against {tuple(total.shape)}; the checkpoints must be of one model"
                )
            total += other[name].to(total.device, torch.float64)
    state = model.state_dict()
    model.load_state_dict({name: (total / last).to(state[name].dtype) for name, total in totals.items()}, strict=False)
    sources = {"run": str(run.resolve()), "checkpoints": [path.name for path in chosen]}
    files = {AVERAGED_MARKER: json.dumps(sources, indent=2) + "\n"}
    if (run / DATA_RECORD).is_file():
        files[DATA_RECORD] = (run / DATA_RECORD).read_text(encoding="utf-8")
    save_model_atomically(model, tokenizer, output, files)
    return output


def save_model_atomically(
    model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", output: Path, files: dict[str, str]
) -> None:
    """save_pretrained (and `files`, name -> text) into a temporary folder beside `output`, then swap it in."""

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")

    try:
        write_folder_atomically(output, write)
    except OSError as error:
        raise UsageError(f"cannot write the averaged model to {output} ({error.strerror or error})") from None


def generation_arguments(args: EvalArguments, input_length: int) -> dict:
    """Sec. 6.1's beam search, output limited to input length + offset (replacing the model's saved max_length)."""
    max_new_tokens = input_length + args.max_length_offset
    if max_new_tokens < 1:
        raise UsageError(
            f"--max_length_offset {args.max_length_offset} leaves no room for an output after an input of "
            f"{input_length} tokens; expected at least {1 - input_length}"
        )
    return {
        "num_beams": args.num_beams,
        "length_penalty": args.length_penalty,
        "max_new_tokens": max_new_tokens,
        "max_length": None,
    }


def encode(tokenizer: "PreTrainedTokenizerBase", texts: list[str], max_source_length: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_source_length)["input_ids"]


def translate(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    texts: list[str],
    args: EvalArguments,
    max_source_length: int,
    progress: bool = True,
) -> list[str]:
    """Beam search over batches of sources of similar length (longest first); hypotheses come back in input order.

    The output limit is the batch's longest input + max_length_offset; sorting keeps that close to each sentence's.
    """
    import torch
    from tqdm.auto import tqdm

    input_ids = encode(tokenizer, texts, max_source_length)
    order = sorted(range(len(texts)), key=lambda index: len(input_ids[index]), reverse=True)
    hypotheses: list[str] = [""] * len(texts)
    batches = [order[start : start + args.batch_size] for start in range(0, len(order), args.batch_size)]
    generation = [generation_arguments(args, len(input_ids[indices[0]])) for indices in batches]  # checked first
    for indices, settings in tqdm(
        list(zip(batches, generation, strict=True)), desc="translating", unit="batch", disable=not progress
    ):
        if args.engine == "ctranslate2":
            sources = [input_ids[index] for index in indices]
            output = model.generate_ids(
                sources, settings["num_beams"], settings["length_penalty"], settings["max_new_tokens"]
            )
        else:
            batch = tokenizer.pad({"input_ids": [input_ids[index] for index in indices]}, return_tensors="pt")
            batch = batch.to(model.device)
            with torch.no_grad():
                output = model.generate(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    **settings,
                    **(COMPILED_DECODING if args.compile else {}),
                )
        for index, text in zip(indices, tokenizer.batch_decode(output, skip_special_tokens=True), strict=True):
            hypotheses[index] = " ".join(text.splitlines())
    return hypotheses


def load_metrics(hub_metrics: bool) -> dict:
    """sacreBLEU and chrF as `evaluate` modules: the local ones in metrics/ unless the Hub's are asked for."""
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


def evaluate_split(args: EvalArguments, data: DataArguments) -> dict:
    """Translate the split, score it, write the hypotheses and the report; returns the report."""
    predictions_file = output_path(args.predictions_file, args.model, f"predictions_{args.split}.txt")
    results_file = output_path(args.results_file, args.model, f"eval_results_{args.split}.json")
    check_writable(predictions_file, "--predictions_file")
    check_writable(results_file, "--results_file")
    raw = load_raw_datasets(data)
    if data.uses_embedded_task:
        origin = "the embedded number task"
    else:
        origin = data.dataset_name or getattr(data, f"{args.split}_file", None) or "the data files"
    if args.split not in raw:
        raise UsageError(f"{origin}: no {args.split!r} split (found: {', '.join(raw)})")
    sources = sentences(raw[args.split], data.source_lang)
    references = sentences(raw[args.split], data.target_lang)
    metrics = load_metrics(args.hub_metrics)
    model, tokenizer = load_translation_model(args)

    start = time.perf_counter()
    hypotheses = translate(model, tokenizer, sources, args, data.max_source_length)
    wall_time = time.perf_counter() - start
    scores = score(metrics, hypotheses, references)
    report = {
        "model": args.model,
        "data": origin,
        "dataset_config": data.dataset_config_name,
        "split": args.split,
        "source_lang": data.source_lang,
        "target_lang": data.target_lang,
        "num_sentences": len(sources),
        "bleu": scores["sacrebleu"]["score"],
        "chrf": scores["chrf"]["score"],
        "sacrebleu_signature": scores["sacrebleu"]["signature"],
        "chrf_signature": scores["chrf"]["signature"],
        "bleu_details": {key: value for key, value in scores["sacrebleu"].items() if key not in ("score", "signature")},
        "metrics": "hub" if args.hub_metrics else "local",
        "decoding": {
            "num_beams": args.num_beams,
            "length_penalty": args.length_penalty,
            "max_length_offset": args.max_length_offset,
            "early_stopping": model.generation_config.early_stopping,
            "batch_size": args.batch_size,
            "max_source_length": data.max_source_length,
            "compile": args.compile,
        },
        "engine": args.engine,
        "quantization": model.quantization if args.engine == "ctranslate2" else None,
        "dtype": None if args.engine == "ctranslate2" else str(model.dtype).removeprefix("torch."),
        "device": str(model.device),
        "wall_time_s": wall_time,
        "sentences_per_second": len(sources) / wall_time,
        "predictions_file": str(predictions_file),
    }
    write_atomically(predictions_file, "".join(f"{hypothesis}\n" for hypothesis in hypotheses))
    write_atomically(results_file, json.dumps(report, indent=2) + "\n")
    refresh_card(Path(args.model), results_file)
    print_table(report, results_file)
    return report


def refresh_card(folder: Path, results_file: Path) -> None:
    """Rebuilds the card of the model folder scored when the report went beside it, its model-index taking the new
    BLEU and chrF; only a card train.py wrote is rewritten (checkpoints and averaged folders have none)."""
    if not folder.is_dir() or results_file.parent.resolve() != folder.resolve():
        return
    from configuration_vanilla import PRESETS

    card = folder_card(folder, PRESETS)
    if card is not None:
        write_atomically(folder / CARD, str(card))


def print_table(report: dict, results_file: Path) -> None:
    decoding = report["decoding"]
    rows = [
        ("model", report["model"]),
        ("data", f"{report['data']} [{report['split']}], {report['source_lang']} -> {report['target_lang']}"),
        ("BLEU", f"{report['bleu']:.2f}  {report['sacrebleu_signature']}"),
        ("chrF", f"{report['chrf']:.2f}  {report['chrf_signature']}"),
        (
            "decoding",
            f"beam {decoding['num_beams']}, length penalty {decoding['length_penalty']}, "
            f"max length input + {decoding['max_length_offset']}",
        ),
        ("engine", f"{report['engine']}, {report['quantization'] or report['dtype']}"),
        (
            "speed",
            f"{report['num_sentences']} sentences in {report['wall_time_s']:.1f} s "
            f"({report['sentences_per_second']:.1f}/s) on {report['device']}",
        ),
        ("written", f"{report['predictions_file']}, {results_file}"),
    ]
    if report["bleu_details"]["totals"][-1] == 0:
        rows.insert(4, ("note", "no hypothesis has 4 tokens, so BLEU is 0 by definition; chrF still measures it"))
    for name, value in rows:
        print(f"{name:<10}{value}")


def plot_cross_attention(args: EvalArguments, max_source_length: int) -> Path:
    """Heatmaps of the last decoder layer's encoder-decoder attention (sec. 3.2.3) while translating one sentence:
    one per head and their mean; rows are the output tokens, columns the source tokens."""
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = output_path(args.attention_file, args.model, "attention.png")
    check_writable(path, "--attention_file")
    # Only the eager implementation returns attention weights.
    model, tokenizer = load_model_and_tokenizer(args.model, attn_implementation="eager")
    take_decoding_defaults(args, model.generation_config)
    source_ids = torch.tensor(encode(tokenizer, [args.plot_attention], max_source_length), device=model.device)
    with torch.no_grad():
        output_ids = model.generate(input_ids=source_ids, **generation_arguments(args, source_ids.shape[1]))
        # Teacher-force the translation: decoder step i reads output token i and attends while predicting i + 1.
        outputs = model(input_ids=source_ids, decoder_input_ids=output_ids[:, :-1], output_attentions=True)
    weights = outputs.cross_attentions[-1][0].float().cpu()  # (heads, output_len, source_len)
    panels = [(f"head {head + 1}", weights[head]) for head in range(weights.shape[0])]
    panels.append(("mean of heads", weights.mean(dim=0)))

    source_tokens = tokenizer.convert_ids_to_tokens(source_ids[0].tolist())
    output_tokens = tokenizer.convert_ids_to_tokens(output_ids[0, 1:].tolist())
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    cell = 0.35
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(columns * (1.5 + cell * len(source_tokens)), rows * (1.5 + cell * len(output_tokens))),
        squeeze=False,
    )
    for axis, (title, panel) in zip(axes.flat, panels, strict=False):
        axis.imshow(panel.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        axis.set_title(title)
        axis.set_xticks(range(len(source_tokens)), source_tokens, rotation=90, fontsize=8)
        axis.set_yticks(range(len(output_tokens)), output_tokens, fontsize=8)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    translation = tokenizer.decode(output_ids[0], skip_special_tokens=True)
    figure.suptitle(f"cross-attention, last layer: {args.plot_attention!r} -> {translation!r}")
    figure.tight_layout()

    try:
        write_file_atomically(path, lambda temporary: figure.savefig(temporary, dpi=100))
    except OSError as error:
        raise UsageError(f"cannot write {path} ({error.strerror or error})") from None
    finally:
        plt.close(figure)
    print(f"{args.plot_attention} -> {translation}\nattention plot: {path}")
    return path


def translate_stdin(args: EvalArguments, max_source_length: int) -> None:
    """Sentences on stdin, one a line; translations on stdout, one a line (an empty line stays empty)."""
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise UsageError(f"stdin: line {line} is not UTF-8 text; expected sentences, one a line") from None
    lines = [line.strip() for line in text.splitlines()]
    model, tokenizer = load_translation_model(args)
    texts = [line for line in lines if line]
    translations = iter(translate(model, tokenizer, texts, args, max_source_length, progress=False) if texts else [])
    for line in lines:
        print(next(translations) if line else "")


def explicit_flags(parser: HfArgumentParser, argv: list[str] | None) -> set[str]:
    """The arguments given on the command line (not left at their defaults)."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        if action.option_strings:
            action.default = argparse.SUPPRESS
    namespace, _ = probe.parse_known_args(argv)
    return set(vars(namespace))


def read_data_record(folder: Path) -> dict | None:
    """The DATA_RECORD train.py writes into a model folder (None if there is none), checked."""
    path = folder / DATA_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: not valid JSON ({error})") from None
    missing = [key for key in (*DATA_RECORD_KEYS, "embedded_task") if not isinstance(record, dict) or key not in record]
    if missing:
        raise UsageError(f"{path}: expected a JSON object with the keys {', '.join(missing)}")
    return record


def model_data_record(model: Path) -> dict | None:
    """The DATA_RECORD of a model folder; for a checkpoint of a run (checkpoint-N with its trainer state), the run's."""
    record = read_data_record(model)
    if record is None and (model / TRAINER_STATE).is_file():
        record = read_data_record(model.parent)
    return record


def resolve_data(data: DataArguments, given: set[str], record: dict | None, model: str, split: str | None) -> None:
    """Defaults from the model's DATA_RECORD for every data argument not given; with no data source given, the
    recorded data of `split` (None: no data needed), or UsageError naming what to pass."""
    if record is not None:
        for name in ("source_lang", "target_lang", "max_source_length", "max_target_length"):
            if name not in given:
                setattr(data, name, record[name])
    if split is None or given & set(DATA_SOURCE_ARGS):
        return
    data_flags = f"--{split}_file FILE with --source_lang and --target_lang, or --dataset_name"
    if record is None:
        raise UsageError(
            f"{model} has no {DATA_RECORD} (a model from an older train.py or the Hub), so the data to score is "
            f"unknown: pass {data_flags}"
        )
    if record["embedded_task"]:
        return  # DataArguments without a data source: the embedded task
    if record["dataset_name"]:
        data.dataset_name, data.dataset_config_name = record["dataset_name"], record["dataset_config_name"]
    elif record[f"{split}_file"]:
        setattr(data, f"{split}_file", record[f"{split}_file"])
    else:
        raise UsageError(
            f"{model} was trained without {split} data ({DATA_RECORD} has no {split}_file): pass {data_flags}"
        )


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser((EvalArguments, DataArguments), description=__doc__.splitlines()[0])
    parser.add_argument(
        "mode", nargs="?", default="evaluate", choices=("evaluate", "translate"), help="translate: stdin to stdout."
    )
    args, data, extra = parser.parse_args_into_dataclasses(args=argv)
    scores_data = extra.mode == "evaluate" and args.plot_attention is None
    check_engine_arguments(args)
    if args.average_last is None:
        check_model_path(args.model)  # before the data and the heavy imports: a typo fails at once
    record = model_data_record(Path(args.model))  # with --average_last, the run's: it goes into the averaged folder
    resolve_data(data, explicit_flags(parser, argv), record, args.model, args.split if scores_data else None)
    if args.average_last is not None:
        run = Path(args.model)
        output = Path(args.averaged_model_dir or run / f"averaged-last-{args.average_last}")
        args.model = str(average_checkpoints(run, args.average_last, output))
        print(f"averaged the last {args.average_last} checkpoints of {run} into {args.model}", file=sys.stderr)
    if extra.mode == "translate":
        translate_stdin(args, data.max_source_length)
    elif not scores_data:
        plot_cross_attention(args, data.max_source_length)
    else:
        evaluate_split(args, data)


if __name__ == "__main__":
    main()
