"""The evaluation CLI: translate a test set with beam search (sec. 6.1) and score it with sacreBLEU and chrF.

    python eval.py --model out                      # the embedded task's test split
    python eval.py --model out --test_file test.jsonl --source_lang en --target_lang de
    python eval.py --model out --average_last 5     # average the last 5 checkpoints first (sec. 6.1)
    python eval.py --model out --plot_attention "twenty-three"
    echo "twenty-three" | python eval.py translate --model out
    python eval.py --model out --engine ctranslate2 --quantization int8   # CTranslate2 (pip install .[fast])

The metrics are the local `evaluate` modules in metrics/ (offline); --hub_metrics loads the Hub's instead.
torch, the model classes, evaluate and matplotlib are imported where used, so that bad input fails fast.
"""

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sacrebleu.metrics import BLEU, CHRF
from transformers import HfArgumentParser

import vanilla_ctranslate2
from vanilla_data import DataArguments, UsageError, exit_on_usage_error, load_raw_datasets, sentences

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
METRICS = {"sacrebleu": BLEU, "chrf": CHRF}  # evaluate module -> the sacrebleu metric it runs


@dataclass
class EvalArguments:
    """The model to evaluate, the decoding settings (the paper's by default, sec. 6.1) and where the results go."""

    model: str = field(metadata={"help": "A model folder or Hub id with its tokenizer; with --average_last, a run."})
    split: str = field(default="test", metadata={"help": "The split to translate and score."})
    num_beams: int = field(default=4, metadata={"help": "Beam size (sec. 6.1: 4)."})
    length_penalty: float = field(default=0.6, metadata={"help": "Length penalty alpha (sec. 6.1: 0.6)."})
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


def output_path(given: str | None, model: str, default_name: str) -> Path:
    """The file the user named, else `default_name` in the model folder (or the current folder for a Hub id)."""
    if given:
        return Path(given)
    folder = Path(model)
    return (folder if folder.is_dir() else Path.cwd()) / default_name


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


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
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    check_model_path(name)
    folder = Path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=True)
        model = AutoModelForSeq2SeqLM.from_pretrained(
            name, trust_remote_code=True, attn_implementation=attn_implementation, dtype=dtype or "auto"
        )
    except (OSError, ValueError) as error:
        where = "no such model folder, and no such Hub model available" if not folder.exists() else "cannot load it"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"{name}: {where} ({first_line})") from None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


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
        return vanilla_ctranslate2.load(args.model, args.quantization)
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
    if args.compile:
        compile_for_decoding(model)
    return model, tokenizer


def compile_for_decoding(model: "PreTrainedModel") -> None:
    """--compile: torch.compile the forward that every decoding step calls (with COMPILED_DECODING's static cache).

    Compiled here rather than by generate()'s auto-compilation, which transformers applies to greedy search and
    sampling but not to beam search."""
    import torch

    model.forward = torch.compile(model.forward)


# generate() arguments for --compile: fixed-size key/value buffers, so each step has the same shapes.
COMPILED_DECODING = {"cache_implementation": "static", "disable_compile": True}


def checkpoint_folders(run: Path) -> list[Path]:
    """The checkpoint-<step> folders Trainer writes into a run folder, oldest first."""
    folders = [path for path in run.glob("checkpoint-*") if path.is_dir() and path.name.split("-")[-1].isdigit()]
    return sorted(folders, key=lambda path: int(path.name.split("-")[-1]))


def average_checkpoints(run: Path, last: int, output: Path) -> Path:
    """Sec. 6.1: "for the base models, we used a single model obtained by averaging the last 5 checkpoints".

    Writes the averaged model (with the newest checkpoint's config, tokenizer and generation config) to `output`.
    """
    import torch
    from transformers import AutoModelForSeq2SeqLM

    if last < 1:
        raise UsageError(f"--average_last ({last}) must be a positive number of checkpoints")
    if not run.is_dir():
        raise UsageError(f"{run}: no such run folder")
    checkpoints = checkpoint_folders(run)
    if len(checkpoints) < last:
        raise UsageError(f"--average_last {last}: {run} has {len(checkpoints)} checkpoint-* folders")
    chosen = checkpoints[-last:]
    model, tokenizer = load_model_and_tokenizer(str(chosen[-1]))
    # Sum in float64 so that averaging many checkpoints loses nothing to rounding.
    totals = {
        name: tensor.to(torch.float64, copy=True)
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point()
    }
    for checkpoint in chosen[:-1]:
        other = AutoModelForSeq2SeqLM.from_pretrained(checkpoint, trust_remote_code=True).state_dict()
        for name, total in totals.items():
            total += other[name].to(total.device, torch.float64)
    state = model.state_dict()
    model.load_state_dict({name: (total / last).to(state[name].dtype) for name, total in totals.items()}, strict=False)
    save_model_atomically(model, tokenizer, output)
    return output


def save_model_atomically(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", output: Path) -> None:
    """save_pretrained into a temporary folder beside `output`, then swap it in."""
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    shutil.rmtree(output, ignore_errors=True)
    os.replace(temporary, output)


def generation_arguments(args: EvalArguments, input_length: int) -> dict:
    """Sec. 6.1's beam search, output limited to input length + offset (replacing the model's saved max_length)."""
    return {
        "num_beams": args.num_beams,
        "length_penalty": args.length_penalty,
        "max_new_tokens": input_length + args.max_length_offset,
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
    batches = range(0, len(order), args.batch_size)
    for start in tqdm(batches, desc="translating", unit="batch", disable=not progress):
        indices = order[start : start + args.batch_size]
        if args.engine == "ctranslate2":
            sources = [input_ids[index] for index in indices]
            arguments = generation_arguments(args, max(map(len, sources)))
            output = model.generate_ids(
                sources, arguments["num_beams"], arguments["length_penalty"], arguments["max_new_tokens"]
            )
            for index, text in zip(indices, tokenizer.batch_decode(output, skip_special_tokens=True), strict=True):
                hypotheses[index] = " ".join(text.splitlines())
            continue
        batch = tokenizer.pad({"input_ids": [input_ids[index] for index in indices]}, return_tensors="pt")
        batch = batch.to(model.device)
        with torch.no_grad():
            output = model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                **generation_arguments(args, batch["input_ids"].shape[1]),
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

    predictions_file = output_path(args.predictions_file, args.model, f"predictions_{args.split}.txt")
    results_file = output_path(args.results_file, args.model, f"eval_results_{args.split}.json")
    report = {
        "model": args.model,
        "data": origin,
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
    print_table(report, results_file)
    return report


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

    # Only the eager implementation returns attention weights.
    model, tokenizer = load_model_and_tokenizer(args.model, attn_implementation="eager")
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

    path = output_path(args.attention_file, args.model, "attention.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)
    print(f"{args.plot_attention} -> {translation}\nattention plot: {path}")
    return path


def translate_stdin(args: EvalArguments, max_source_length: int) -> None:
    """Sentences on stdin, one a line; translations on stdout, one a line (an empty line stays empty)."""
    model, tokenizer = load_translation_model(args)
    lines = [line.strip() for line in sys.stdin.read().splitlines()]
    texts = [line for line in lines if line]
    translations = iter(translate(model, tokenizer, texts, args, max_source_length, progress=False) if texts else [])
    for line in lines:
        print(next(translations) if line else "")


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser((EvalArguments, DataArguments), description=__doc__.splitlines()[0])
    parser.add_argument(
        "mode", nargs="?", default="evaluate", choices=("evaluate", "translate"), help="translate: stdin to stdout."
    )
    args, data, extra = parser.parse_args_into_dataclasses(args=argv)
    check_engine_arguments(args)
    if args.average_last is None:
        check_model_path(args.model)  # before the data and the heavy imports: a typo fails at once
    else:
        run = Path(args.model)
        output = Path(args.averaged_model_dir or run / f"averaged-last-{args.average_last}")
        args.model = str(average_checkpoints(run, args.average_last, output))
        print(f"averaged the last {args.average_last} checkpoints of {run} into {args.model}", file=sys.stderr)
    if extra.mode == "translate":
        translate_stdin(args, data.max_source_length)
    elif args.plot_attention is not None:
        plot_cross_attention(args, data.max_source_length)
    else:
        evaluate_split(args, data)


if __name__ == "__main__":
    main()
