"""The evaluation CLI: translate a test set with beam search (sec. 6.1) and score it with sacreBLEU and chrF.

    python eval.py --model out                      # the test data out/data_args.json records (train.py writes it)
    python eval.py --model out --test_file test.jsonl --source_lang en --target_lang de
    python eval.py --model out --average_last 5     # average the last 5 checkpoints first (sec. 6.1)
    python eval.py --model out --plot_attention "twenty-three"
    echo "twenty-three" | python eval.py translate --model out
    python eval.py --model out --engine ctranslate2 --quantization int8   # CTranslate2 (pip install .[fast])

The metrics are the local `evaluate` modules of vanilla_metrics/ (offline); --hub_metrics loads the Hub's instead.
torch, the model classes, evaluate and matplotlib are imported where used, so that bad input fails fast.
"""

import json
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import field
from pathlib import Path
from typing import Literal, TextIO

from transformers import HfArgumentParser

import vanilla_ctranslate2
from vanilla_averaging import average_checkpoints, check_run_path, reading_averaged_model
from vanilla_cli import (
    UsageError,
    UsageErrorParser,
    argument_dataclass,
    avoid_cudnn_attention,
    exit_on_usage_error,
    given_flags,
    refuse_unknown_arguments,
    sigterm_as_interrupt,
    text_lines,
)
from vanilla_corpus import SPLITS, DataArguments, dataset_folder_files, load_raw_datasets, sentences
from vanilla_data_record import model_data_record, resolve_data, run_data_record
from vanilla_files import (
    AVERAGED_MARKER,
    DATA_RECORD,
    check_output_files,
    check_writable,
    output_label,
    output_path,
    read_json,
    write_text_atomically,
)
from vanilla_hub import CARD, CARD_DIGEST, REPORT_FILES, card_text, folder_card, is_card_as_written
from vanilla_metrics import BLEU_TOKENIZERS, load_metrics, score
from vanilla_plots import plot_cross_attention
from vanilla_translation import MAX_LENGTH_OFFSET, check_model_path, load_translation_model, translate

MODES = ("evaluate", "translate")
STDOUT = "-"  # an output flag naming stdout, as sacreBLEU and most tools read it
OFFSET_LIMIT = 10_000  # tokens past the input: beyond it, a hypothesis grows without meaning, or memory runs out


@argument_dataclass
class EvalArguments:
    """The model to evaluate, the decoding settings (the model's generation_config unless given) and the outputs.

    Args:
        model: A model folder or Hub id with its tokenizer; with --average_last, a run.
        split: The split to translate and score.
        num_beams: Beam size (default: generation_config's; train.py saves 4, sec. 6.1).
        length_penalty: Length penalty alpha (default: generation_config's; train.py saves 0.6, sec. 6.1's alpha,
            applied as generate()'s length^alpha rather than the paper's ((5 + length) / 6)^alpha).
        max_length_offset: Maximum output length = input length + this, in tokens (sec. 6.1: 50).
        batch_size: Sentences per generate() call.
        predictions_file: Hypotheses, one a line (default: predictions_<split>.txt beside the model; for a Hub id or
            a revision in the Hub's cache, in the working folder); `-`: stdout, the printed scores going to stderr.
        results_file: The JSON report (default: eval_results_<split>.json beside the model, as the hypotheses); `-`:
            stdout, as --predictions_file.
        hub_metrics: Load sacrebleu and chrf from the Hub instead of the local vanilla_metrics/.
        bleu_tokenize: sacreBLEU's tokenizer for BLEU (default: sacreBLEU's choice for the target language: zh,
            ja-mecab or ko-mecab for those languages, else 13a).
        average_last: Average the weights of the last N checkpoint-* folders of --model first.
        averaged_model_dir: Where the averaged model is written (default: <run>/averaged-last-N).
        plot_attention: Only plot the last layer's cross-attention while translating this sentence.
        attention_file: The attention plot (default: attention.png beside the model, as the hypotheses).
        engine: transformers' generate(), or CTranslate2 (converted once, cached beside the model; for a Hub model,
            under ~/.cache/vanilla-transformer/ctranslate2).
        quantization: CTranslate2 weight and compute type: float32 (default), int8, int8_float32, int16; on a GPU
            also float16, bfloat16, int8_float16, int8_bfloat16.
        dtype: transformers engine: run the model in this dtype (default: as saved).
        compile: transformers engine: decode with a static cache and torch.compile.
        compile_mode: --compile's torch.compile mode (default: reduce-overhead, transformers' own for generate(): on a
            GPU each decoding step replays as CUDA graphs; `default` compiles without them).
    """

    model: str
    split: str = "test"
    num_beams: int | None = None
    length_penalty: float | None = None
    max_length_offset: int = MAX_LENGTH_OFFSET
    batch_size: int = 64
    predictions_file: str | None = None
    results_file: str | None = None
    hub_metrics: bool = False
    bleu_tokenize: str | None = field(default=None, metadata={"choices": BLEU_TOKENIZERS})
    average_last: int | None = None
    averaged_model_dir: str | None = None
    plot_attention: str | None = None
    attention_file: str | None = None
    engine: Literal["transformers", "ctranslate2"] = "transformers"
    quantization: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None = None

    def __post_init__(self):
        for name in ("num_beams", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"--{name} ({getattr(self, name)}) must be at least 1")
        if self.length_penalty is not None and not math.isfinite(self.length_penalty):
            raise UsageError(f"--length_penalty ({self.length_penalty}) must be a finite number")
        if self.length_penalty is not None and abs(self.length_penalty) > 100:  # length ** penalty must stay a float
            raise UsageError(f"--length_penalty ({self.length_penalty}) must lie in [-100, 100] (sec. 6.1: 0.6)")
        if self.max_length_offset > OFFSET_LIMIT:
            raise UsageError(
                f"--max_length_offset ({self.max_length_offset}) must be at most {OFFSET_LIMIT} (sec. 6.1: 50)"
            )
        if self.split not in SPLITS:
            raise UsageError(f"--split {self.split!r}: expected one of {', '.join(SPLITS)}")
        if self.plot_attention is not None and not self.plot_attention.strip():
            raise UsageError("--plot_attention: expected a sentence to translate, got an empty one")
        if self.plot_attention is not None and self.compile:
            raise UsageError("--plot_attention translates one sentence with eager attention; leave out --compile")
        if self.compile_mode is not None and not self.compile:
            raise UsageError(f"--compile_mode {self.compile_mode} applies to --compile; pass both")
        if self.attention_file is not None and self.plot_attention is None:
            raise UsageError("--attention_file names the plot of --plot_attention; pass both")
        if self.attention_file == STDOUT:
            raise UsageError("--attention_file -: the plot is an image, and stdout takes text here; name a file")
        if self.averaged_model_dir is not None and self.average_last is None:
            raise UsageError("--averaged_model_dir names the folder --average_last N averages into; pass both")
        if self.compile and self.compile_mode is None:
            self.compile_mode = "reduce-overhead"


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


# What only scoring a split reads.
SCORING_FLAGS = ("split", "predictions_file", "results_file", "hub_metrics", "bleu_tokenize")


def check_mode_arguments(mode: str, args: EvalArguments, given: set[str]) -> None:
    """UsageError for a flag of scoring a split given where nothing is scored (translate, --plot_attention), and for
    --max_target_length, which no mode reads: it would be left unread, its file never written."""
    if "max_target_length" in given:
        raise UsageError("--max_target_length applies to training; eval.py scores against whole references")
    where = "eval.py translate" if mode == "translate" else "--plot_attention" if args.plot_attention else None
    unread = [f"--{name}" for name in SCORING_FLAGS if name in given]
    if where and unread:
        raise UsageError(f"{', '.join(unread)} applies to scoring a split, which {where} does not; leave it out")


def folder_files(name: str | None, config: str | None, named: str) -> dict[str, str]:
    """The files of a local --dataset_name folder (none for a Hub dataset), each named by its split, as
    check_output_files takes them."""
    files = dataset_folder_files(name, config)
    return {f"{split} file {path.name} of the {named}": str(path) for split, paths in files.items() for path in paths}


def averaged_from(marker: Path) -> dict | None:
    """An averaged model's AVERAGED_MARKER (the run, the checkpoints and their weights' SHA-256), or None for a model
    that is not one; UsageError for a damaged marker, which eval.py --average_last rewrites."""
    if not marker.is_file():
        return None
    sources = read_json(marker)
    if not isinstance(sources, dict):
        raise UsageError(f"{marker}: damaged (not a JSON object); average the checkpoints again to rewrite it")
    return sources


def evaluate_split(args: EvalArguments, data: DataArguments, record: dict | None, given: set[str]) -> dict:
    """Translate the split, score it, write the hypotheses and the report; returns the report. No output may replace
    a data file given (or one of a --dataset_name folder's), or one the model's data record (`record`) names: its
    run's training data among them. A data flag the user gave (`given`) names its files; the record names the rest."""
    if args.predictions_file == STDOUT and args.results_file == STDOUT:
        raise UsageError("--predictions_file and --results_file are both - (stdout): name a file for one of them")
    predictions_file = output_path(args.predictions_file, args.model, f"predictions_{args.split}.txt")
    results_file = output_path(args.results_file, args.model, f"eval_results_{args.split}.json")
    outputs = {
        output_label(flag, given): path
        for flag, given, path in [
            ("--predictions_file", args.predictions_file, predictions_file),
            ("--results_file", args.results_file, results_file),
        ]
        if given != STDOUT
    }
    for label, path in outputs.items():
        check_writable(path, label)
    recorded = {
        f"{split}_file the model was trained with ({DATA_RECORD})": (record or {}).get(f"{split}_file")
        for split in SPLITS
    }
    if record is not None:
        trained = f"dataset_name the model was trained with ({DATA_RECORD})"
        recorded |= folder_files(record["dataset_name"], record["dataset_config_name"], trained)
    flags = {f"--{split}_file": getattr(data, f"{split}_file") for split in SPLITS if f"{split}_file" in given}
    if "dataset_name" in given:
        flags |= folder_files(data.dataset_name, data.dataset_config_name, f"--dataset_name {data.dataset_name}")
    data_files = {**recorded, **flags}  # a file both name: the flag given names it
    check_output_files(outputs, data_files)
    for label, path in outputs.items():
        check_not_another_models_report(label, path, Path(args.model), args.average_last is not None)
    averaged = averaged_from(Path(args.model) / AVERAGED_MARKER)  # an averaged model: its run and checkpoints
    raw = load_raw_datasets(data)
    if data.uses_embedded_task:
        origin = "the embedded number task"
    else:
        origin = data.dataset_name or getattr(data, f"{args.split}_file", None) or "the data files"
    if args.split not in raw:
        raise UsageError(f"{origin}: no {args.split!r} split (found: {', '.join(raw)})")
    sources = sentences(raw[args.split], data.source_lang)
    references = sentences(raw[args.split], data.target_lang)
    metrics = load_metrics(args.hub_metrics, data.target_lang, args.bleu_tokenize)
    model, tokenizer = load_translation_model(args)

    start = time.perf_counter()
    hypotheses = translate(model, tokenizer, sources, args, data.max_source_length)
    wall_time = time.perf_counter() - start
    scores = score(metrics, hypotheses, references)
    report = {
        "model": args.model,
        "averaged_from": averaged,
        "data": origin,
        "dataset_config": data.dataset_config_name,
        "split": args.split,
        "source_lang": data.source_lang,
        "target_lang": data.target_lang,
        "num_sentences": len(sources),
        "references_normalized": references_normalized(tokenizer, references),
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
            "compile_mode": args.compile_mode,
        },
        "engine": args.engine,
        "quantization": model.quantization if args.engine == "ctranslate2" else None,
        "dtype": None if args.engine == "ctranslate2" else str(model.dtype).removeprefix("torch."),
        "device": str(model.device),
        "wall_time_s": wall_time,
        "sentences_per_second": len(sources) / wall_time,
        "predictions_file": output_name(args.predictions_file, predictions_file),
    }
    refresh = args.results_file != STDOUT and card_to_refresh(Path(args.model), results_file)  # before the report
    write_output(args.predictions_file, predictions_file, "".join(f"{hypothesis}\n" for hypothesis in hypotheses))
    write_output(args.results_file, results_file, json.dumps(report, indent=2) + "\n")
    if refresh:
        refresh_card(Path(args.model))
    to_stdout = is_stdout(args.predictions_file, predictions_file) or is_stdout(args.results_file, results_file)
    print_table(report, output_name(args.results_file, results_file), sys.stderr if to_stdout else sys.stdout)
    return report


def references_normalized(tokenizer, references: list[str]) -> int:
    """How many references the tokenizer's normalizer changes beyond their spacing (NFKC: a decomposed "é", a
    ligature, full-width letters): decoded from tokens, a hypothesis cannot match them as written."""
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    if normalizer is None:
        return 0
    return sum(normalizer.normalize_str(reference).split() != reference.split() for reference in references)


def output_name(given: str | None, path: Path) -> str:
    """How the report names an output: its path, or `<stdout>` for `-`."""
    return "<stdout>" if given == STDOUT else str(path)


def is_stdout(given: str | None, path: Path) -> bool:
    """Whether an output is stdout: `-`, or a path to it (/dev/stdout); the scores table then goes to stderr."""
    if given == STDOUT:
        return True
    try:
        return os.path.samestat(path.stat(), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError):  # no such file, or a stdout without a descriptor
        return False


def write_output(given: str | None, path: Path, text: str) -> None:
    """`text` on stdout for `-`, else written atomically into `path`."""
    if given == STDOUT:
        stdout_in_utf8()
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_text_atomically(path, text)


def stdout_in_utf8() -> None:
    """Text on stdout in UTF-8, as stdin is read and files are written, whatever the locale (PYTHONIOENCODING) says:
    the next program in the pipe (sacrebleu) reads UTF-8."""
    sys.stdout.reconfigure(encoding="utf-8")


def check_not_another_models_report(flag: str, path: Path, model: Path, averaged: bool) -> None:
    """UsageError for an output named like eval.py's reports (REPORT_FILES) in the folder of a model other than the
    one scored (`averaged`: the average --average_last made of the run given): that model's card and overwrite would
    take the report as its own."""
    folder = path.parent.resolve()
    ours = model.is_dir() and folder == model.resolve()
    if not ours and (folder / "config.json").is_file() and any(path.match(name) for name in REPORT_FILES):
        scored = "the averaged model" if averaged else "--model"  # --model named the run, not its average
        raise UsageError(
            f"{flag} {path} would read as a report of the model in {folder}, not of {scored} {model}: name a file "
            "outside that folder, or another file name"
        )


def card_to_refresh(folder: Path, results_file: Path) -> bool:
    """Whether eval.py rebuilds the card of the model folder scored, its model-index taking the new BLEU and chrF:
    the report goes beside it, and the card is one train.py (or eval.py) wrote from the folder's files and nobody
    edited since (checkpoints and averaged folders have none). An edited card is the user's: a note says it stays.

    A card is as written while its text keeps the SHA-256 on its last line (is_card_as_written): an eval.py stopped
    between its report and the card leaves the card ours. A card without that line (written before cards carried it)
    is as written when it is the card rebuilt from the folder's files."""
    if not folder.is_dir() or results_file.parent.resolve() != folder.resolve():
        return False
    from configuration_vanilla import PRESETS

    card = folder_card(folder, PRESETS)
    if card is None:
        return False
    text = (folder / CARD).read_text(encoding="utf-8")
    as_written = is_card_as_written(text)
    if as_written is None:  # read before the report changes what the rebuilt card shows
        # The same lines in any order: train.py wrote its table's rows unsorted before all_results.json's order.
        as_written = sorted(text.splitlines()) == sorted(str(card).splitlines())
    if not as_written:
        print(f"note: {folder / CARD} {card_change(text)}; it stays as it is (no new scores)", file=sys.stderr)
    return as_written


def card_change(text: str) -> str:
    """What the note says of a card that is not as written. A card without a digest line may be an older train.py's,
    unedited: its wording (the decoding line, the eval.py command) is not the one the rebuilt card has now."""
    if CARD_DIGEST.split("{}")[0] in text:
        return "was edited since it was written"
    return "differs from the card train.py writes now (edited, or written by an older train.py)"


def refresh_card(folder: Path) -> None:
    from configuration_vanilla import PRESETS

    write_text_atomically(folder / CARD, card_text(folder_card(folder, PRESETS)))


def print_table(report: dict, results_file: str, stream: TextIO) -> None:
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
    if report["references_normalized"]:
        changed = f"{report['references_normalized']} of {report['num_sentences']} references"
        undone = "which a hypothesis, decoded from tokens, cannot undo: scored as written, they cost BLEU and chrF"
        rows.insert(4, ("note", f"{changed} change under the tokenizer's normalizer (e.g. NFKC), {undone}"))
    for name, value in rows:
        print(f"{name:<10}{value}", file=stream)


def translate_stdin(args: EvalArguments, max_source_length: int, loaded: Callable[[], object]) -> None:
    """Sentences on stdin, one a line; translations on stdout, one a line (an empty line stays empty). The lines are
    translated in chunks, each what arrived while the chunk before was translated (stdin_chunks), and each chunk's
    translations are flushed at once: a line typed at a terminal, or written by a program that waits for its
    translation, is answered at once, and a file piped in is translated many batches at a time. `loaded` is called
    once the model is in memory: nothing is read from its folder after that."""
    model, tokenizer = load_translation_model(args)
    loaded()
    stdout_in_utf8()
    if sys.stdin.isatty():
        print("translating each line as it is entered; end with Ctrl-D", file=sys.stderr)
    number = 1  # of the chunk's first line
    for data in stdin_chunks(sys.stdin.fileno(), most_lines=CHUNK_BATCHES * args.batch_size):
        lines = [line.strip() for line in text_lines(stdin_text(data, number))]
        texts = [line for line in lines if line]
        translations = iter(
            translate(model, tokenizer, texts, args, max_source_length, progress=False) if texts else []
        )
        for line in lines:
            print(next(translations) if line else "")
        sys.stdout.flush()
        number += len(lines)


CHUNK_BATCHES = 16  # a chunk of stdin is at most this many --batch_size batches, sorted by length among themselves


def stdin_chunks(fd: int, most_lines: int) -> Iterator[bytes]:
    """The bytes of `fd` in whole lines, each chunk all the whole lines that have arrived (at least one, at most
    `most_lines`); the last line may lack its newline. A thread reads on while a chunk is translated, so a writer
    is never held up, and one that writes all its input before reading the answers cannot deadlock on a full pipe."""
    arrived: queue.SimpleQueue[bytes | OSError] = queue.SimpleQueue()
    threading.Thread(target=read_all, args=(fd, arrived), daemon=True).start()
    pending = bytearray()
    ended = False
    while True:
        while not ended:
            try:  # wait only for a line's end; then take what is there
                data = arrived.get(block=b"\n" not in pending)
            except queue.Empty:
                break
            if isinstance(data, OSError):
                raise data
            pending += data
            ended = not data
        if not pending:
            return
        end = line_ends(pending, most_lines)
        if ended and end == 0:
            end = len(pending)
        yield bytes(pending[:end])
        del pending[:end]


def read_all(fd: int, arrived: "queue.SimpleQueue[bytes | OSError]") -> None:
    """Put what `fd` gives into `arrived` as it comes, an empty bytes at its end (or the error that stopped it)."""
    try:
        while data := os.read(fd, 1 << 16):
            arrived.put(data)
        arrived.put(b"")
    except OSError as error:
        arrived.put(error)


def line_ends(data: bytearray, most_lines: int) -> int:
    """The length of `data`'s first `most_lines` whole lines (all of them where fewer; 0 where none)."""
    end = 0
    for _ in range(most_lines):
        found = data.find(b"\n", end)
        if found < 0:
            break
        end = found + 1
    return end


def stdin_text(data: bytes, first_line: int = 1) -> str:
    """stdin's bytes (from line `first_line` on) as text, a byte-order mark at its start dropped; UsageError naming
    a line that is not UTF-8."""
    try:
        return data.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as error:
        line = first_line + data[: error.start].count(b"\n")
        raise UsageError(f"stdin: line {line} is not UTF-8 text; expected sentences, one a line") from None


@contextmanager
def model_held(args: EvalArguments) -> Iterator[None]:
    """--model held for the block, from loading it to writing the last report: an averaged folder (with
    --average_last, the run's average, made first) is not replaced by another eval.py meanwhile."""
    if args.average_last is None:
        with reading_averaged_model(Path(args.model)):
            yield
        return
    run = Path(args.model)
    output = Path(args.averaged_model_dir or run / f"averaged-last-{args.average_last}")
    named = "--averaged_model_dir" if args.averaged_model_dir else "the averaged folder"  # the default: no flag typed
    with average_checkpoints(run, args.average_last, output, named):
        args.model = str(output)
        print(f"averaged the last {args.average_last} checkpoints of {run} into {args.model}", file=sys.stderr)
        yield


class EvalParser(UsageErrorParser, HfArgumentParser):
    """HfArgumentParser whose errors are usage errors."""


def argument_parser() -> EvalParser:
    """eval.py's flags (the decoding's and outputs', the data's) and its mode."""
    parser = EvalParser((EvalArguments, DataArguments), description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="evaluate", choices=MODES, help="translate: stdin to stdout.")
    return parser


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    parser = argument_parser()
    tokens = sys.argv[1:] if argv is None else argv
    # An unknown flag's value would be read as the mode: name the flag first.
    for token in tokens:
        if token.startswith("--") and token.split("=")[0] not in parser._option_string_actions:
            raise UsageError(f"unknown flag {token.split('=')[0]} (python eval.py --help lists them)")
    # A flag whose value may be left out (--compile) takes the word after it as its value, the mode too.
    for flag, word in zip(tokens, tokens[1:], strict=False):
        if word in MODES and getattr(parser._option_string_actions.get(flag), "nargs", None) == "?":
            raise UsageError(
                f"{flag} {word}: {flag} would take the mode as its value; put the mode first: {word} {flag}"
            )
    refuse_unknown_arguments(parser, argv, "eval.py", "--flag value pairs and at most one mode (evaluate, translate)")
    args, data, extra = parser.parse_args_into_dataclasses(args=argv)
    scores_data = extra.mode == "evaluate" and args.plot_attention is None
    given = given_flags(parser, argv)
    check_mode_arguments(extra.mode, args, given)
    check_engine_arguments(args)
    if args.average_last is None:
        check_model_path(args.model)  # before the data and the heavy imports: a typo fails at once
    else:
        check_run_path(Path(args.model), args.average_last)
    # With --average_last, the data of the run's checkpoints: their record goes into the averaged folder.
    record = model_data_record(Path(args.model)) if args.average_last is None else run_data_record(Path(args.model))
    resolve_data(data, given, record, args.model, args.split if scores_data else None)
    avoid_cudnn_attention()  # batches of many shapes
    with sigterm_as_interrupt(), ExitStack() as held:
        held.enter_context(model_held(args))
        if extra.mode == "translate":
            translate_stdin(args, data.max_source_length, loaded=held.close)  # no report: held while loading
        elif not scores_data:
            plot_cross_attention(args, data.max_source_length)
        else:
            evaluate_split(args, data, record, given)


if __name__ == "__main__":
    main()
