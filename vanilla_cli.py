"""What train.py and eval.py share as command-line tools: usage errors, reading the user's files, recipe files."""

import argparse
import bz2
import codecs
import contextlib
import dataclasses
import enum
import functools
import gzip
import inspect
import json
import lzma
import os
import re
import shlex
import signal
import sys
import types
import typing
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import yaml

RECIPE_SUFFIXES = (".json", ".yaml", ".yml")
# A data file may be compressed (train.jsonl.gz): its last suffix names the stdlib codec, as for `datasets`' JSON and
# CSV builders, which read a streamed file.
COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# What the codecs raise for data cut short (EOFError, bz2's ValueError) or damaged (OSError without an errno, e.g.
# BadGzipFile; zlib.error; LZMAError).
DAMAGED_DATA = (EOFError, ValueError, OSError, zlib.error, lzma.LZMAError)


class UsageError(Exception):
    """Bad input from the user (a missing file, a language not in the data, ...): reported in one line, exit code 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what torchrun, Slurm and Kubernetes send to stop a job), taken as Ctrl-C is: the run stops cleanly."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises Terminated, so that cleanup (finally, atexit) runs as after Ctrl-C."""

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's `(default: X)` after each flag's help, except where the help says its default itself: there X is
    only the value that stands for it (None for "the model's generation_config")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if "default" in (action.help or "").lower():
            return action.help
        return super()._get_help_string(action)


class UsageErrorParser:
    """For an argparse parser class (before it in the bases): a bad flag or value is a UsageError, one `error:` line
    and exit code 2, in place of argparse's whole usage text before its error; --help states each default once. A
    flag is its whole name: argparse would read `--max_step` as --max_steps, and a flag added later could change
    what a shortened one means."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=HelpFormatter, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        if message.startswith("argument --") and message.endswith(": expected one argument"):
            flag = message.removeprefix("argument ").split("/")[0].split(":")[0]  # "--output_dir/--output-dir: ..."
            # What argparse also says of a value that starts with `-` (a folder -run): it takes it for a flag.
            message += f" (a value that starts with - is written {flag}=-value)"
        raise UsageError(message)


def first_line(error: Exception) -> str:
    """An exception's message cut to its first line (its name where it has none), for an `error:` line."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def eval_command(*arguments: str | Path, launcher: tuple[str, ...] = ("python", "eval.py")) -> str:
    """`python eval.py <arguments>` (or another `launcher`), each word quoted for a shell: a command to paste. A value
    that starts with `-` (a folder named -run) is joined to its flag, `--model=-run`: argparse would take it for one."""
    words = []
    for word in map(str, arguments):
        if word.startswith("-") and not word.startswith("--") and words and words[-1].startswith("--"):
            words[-1] = f"{words[-1]}={word}"
        else:
            words.append(word)
    return shlex.join([*launcher, *words])


def eval_launcher() -> tuple[str, ...]:
    """How to run eval.py from here, as train.py was run: `vanilla-eval` after `vanilla-train` (the installed
    commands), else `python` and the eval.py beside the train.py run (`python ../vanilla/eval.py`)."""
    program = Path(sys.argv[0])
    if program.name == "vanilla-train":
        return ("vanilla-eval",)
    if program.name == "train.py":
        return ("python", str(program.with_name("eval.py")))
    return ("python", "eval.py")


def is_main_process() -> bool:
    """Whether this is the main process of a multi-process launch (torchrun's RANK 0), or the only process."""
    return int(os.environ.get("RANK", 0)) == 0


def exit_on_usage_error(main: Callable) -> Callable:
    """Decorator for a CLI's main(): a UsageError becomes `error: <message>` on one stderr line and exit code 2; a
    closed stdout ends quietly (exit 141, as SIGPIPE), Ctrl-C with one line (exit 130), as does SIGTERM within
    sigterm_as_interrupt (exit 143).

    Of a multi-process launch (torchrun), only the main process prints: every process refuses the same input."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as error:
            if is_main_process():
                message = " ".join(str(error).split())
                print(f"error: {message}", file=sys.stderr, flush=True)
            sys.exit(2)
        except BrokenPipeError:  # the reader of stdout stopped (`| head`): end quietly, as a filter ends on SIGPIPE
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
            sys.exit(128 + signal.SIGPIPE)
        except KeyboardInterrupt as stop:
            print("interrupted", file=sys.stderr, flush=True)
            sys.exit(128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT))

    return wrapper


def avoid_cudnn_attention() -> None:
    """Leaves PyTorch's cuDNN attention out of scaled_dot_product_attention's choice, unless the user asks for it
    with PyTorch's own TORCH_CUDNN_SDPA_PREFERRED=1. PyTorch prefers cuDNN on Hopper GPUs (H100, H200), and cuDNN
    builds a plan for each new shape of the attention's inputs, forward and backward, a tenth of a second or more
    each: the token-budget batches bring a new shape at nearly every step of the first epoch (on an H100 the GPU
    recipe's first epoch ran at a tenth of the speed of the others, most likely for that: BENCHMARKS.md), as does
    each batch of a translation. Flash and memory-efficient attention have no plan to build, and at these lengths
    attention is a small share of a step."""
    import torch

    if os.environ.get("TORCH_CUDNN_SDPA_PREFERRED") != "1":
        torch.backends.cuda.enable_cudnn_sdp(False)


def cpu_has_bf16_kernels() -> bool:
    """Whether oneDNN has bf16 matrix kernels for this CPU (they need AVX-512 or AMX). Without them PyTorch runs bf16
    on fallback kernels: on an AVX2 CPU a bf16 autocast training step took ~30x the time of a float32 one, a bf16
    matrix product ~5x (BENCHMARKS.md)."""
    import torch

    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


# bf16 on a CPU is for speed: where its matrix products run slower than float32's it is not taken. The CPUs measured so
# far lie far from 1 (BENCHMARKS.md), so the choice stays the same from run to run.
CPU_BF16_SLOWER = 1.0
CPU_BF16_ROUNDS = 10  # timed rounds of cpu_bf16_speed, after 2 untimed ones


@functools.cache
def cpu_bf16_speed() -> float:
    """How fast a bf16 matrix product runs on this CPU against a float32 one (a 1024 x 512 x 1024 product), 0 without
    bf16 matrix kernels. With AVX-512 BF16, bf16 autocast trained 1.2-1.3x faster than float32 on an AMD EPYC (Zen 4),
    but 0.65x on an Intel Xeon whose AMX is not available, where this product runs at ~0.54x (BENCHMARKS.md).

    Timed on one thread, the two precisions taking turns, as the median of the rounds' ratios: on two threads of
    cores that other processes share, a product waits for whichever thread was descheduled, and timing one precision
    after the other measured the load instead (0.4x to 1.3x in five calls beside a training run; on one thread,
    taking turns, 0.55x to 0.64x, the idle cores' figure)."""
    import statistics
    import time

    import torch

    if not cpu_has_bf16_kernels():
        return 0.0
    generator = torch.Generator().manual_seed(0)
    inputs, weight = torch.randn(1024, 512, generator=generator), torch.randn(1024, 512, generator=generator)
    operands = {dtype: (inputs.to(dtype), weight.to(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    ratios, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for repeat in range(CPU_BF16_ROUNDS + 2):
            seconds = {}
            for dtype, (a, w) in operands.items():
                start = time.perf_counter()
                torch.nn.functional.linear(a, w)
                seconds[dtype] = time.perf_counter() - start
            if repeat >= 2:
                ratios.append(seconds[torch.float32] / seconds[torch.bfloat16])
    finally:
        torch.set_num_threads(threads)
    return statistics.median(ratios)


def cpu_bf16_problem() -> str | None:
    """Why bf16 would run slower than float32 on this CPU, or None where it pays (cpu_bf16_speed)."""
    speed = cpu_bf16_speed()
    if speed == 0:
        return "this CPU has no bf16 matrix kernels (oneDNN's need AVX-512 or AMX)"
    if speed < CPU_BF16_SLOWER:
        return f"this CPU's bf16 matrix kernels run at {speed:.2f}x the speed of its float32 ones (measured)"
    return None


def compression_of(path: str | Path) -> str | None:
    """The suffix that says how a file is compressed (a key of COMPRESSIONS), or None."""
    suffix = Path(path).suffix.lower()
    return suffix if suffix in COMPRESSIONS else None


def content_blocks(path: str | Path, compression: str | None) -> Iterator[bytes]:
    """A file's content a megabyte at a time, decompressed by the codec of `compression` (a COMPRESSIONS key, or None);
    UsageError naming a compressed file that is cut short or damaged, OSError for a file that cannot be read."""
    with open(path, "rb") as raw:
        if compression is None:
            yield from iter(lambda: raw.read(1 << 20), b"")
            return
        try:
            with COMPRESSIONS[compression](raw, "rb") as file:
                yield from iter(lambda: file.read(1 << 20), b"")
        except DAMAGED_DATA as error:
            if isinstance(error, OSError) and error.errno is not None:  # the disk's error, not the data's
                raise
            raise UsageError(f"{path}: cannot decompress it ({error}); expected a whole {compression} file") from None


def no_such_file(path: str) -> UsageError:
    """The error for a file that is not there; a relative path also names the folder it was looked for in (the
    working folder: a recipe's paths are read from where train.py runs, not from the recipe's folder)."""
    where = "" if Path(path).is_absolute() else f" (looked for in the working folder {Path.cwd()})"
    return UsageError(f"{path}: no such file{where}")


def read_text(path: str) -> str:
    """The UTF-8 text of a file (decompressed where its suffix names a codec, COMPRESSIONS), without a leading
    byte-order mark; UsageError saying why a file cannot be read."""
    file = Path(path)
    if file.is_dir():
        raise UsageError(f"{path} is a folder; expected a file")
    if not file.is_file():
        raise no_such_file(path)
    try:
        data = b"".join(content_blocks(file, compression_of(file)))
    except OSError as error:
        raise UsageError(f"{path}: cannot read the file ({error.strerror})") from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UsageError(f"{path} is UTF-16 text; expected UTF-8 (save it as UTF-8)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise UsageError(
            f"{path}: line {line} is not UTF-8 (byte {data[error.start]:#04x}); expected UTF-8 text"
        ) from None


def text_lines(text: str) -> list[str]:
    """The lines of a text as JSON Lines and line-aligned corpora define them, ended by "\n" (or "\r\n") alone:
    str.splitlines also ends a line at U+2028, U+0085, a form feed and more, which a sentence may hold."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_recipe(path: str, parser: argparse.ArgumentParser) -> dict:
    """The flags held by a JSON or YAML file, refusing keys that are no flag of the parser (an HfArgumentParser),
    values whose type the flag's field does not take, and strings that are not one of the flag's choices (argparse
    checks a default's type, not its choices). A string goes through the flag's conversion as on the command line
    (argparse converts a string default); other values reach the dataclass as they are."""
    text = read_text(path)
    try:
        values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise UsageError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {error}") from None
    if not isinstance(values, dict):
        raise UsageError(f"{path}: expected a mapping of flag names to values")
    unknown = sorted(set(values) - {action.dest for action in parser._actions})
    if unknown:
        hints = "".join(unknown_flag_hint(name) for name in unknown)
        raise UsageError(f"{path}: unknown keys {', '.join(unknown)} (python train.py --help lists the flags){hints}")
    hints = {}
    for cls in getattr(parser, "dataclass_types", ()):
        hints.update(typing.get_type_hints(cls))
    choices = {action.dest: action.choices for action in parser._actions if action.choices is not None}
    conversions = {action.dest: action.type for action in parser._actions if callable(action.type)}
    for name, value in values.items():
        if name in hints and not isinstance(value, str) and not fits(value, hints[name]):
            hint = type_name(hints[name])
            yaml_word = " (YAML reads no, yes, on, off as booleans: quote them)" if isinstance(value, bool) else ""
            raise UsageError(f"{path}: {name}: {json.dumps(value)} is not a value of type {hint}{yaml_word}")
        allowed = [str(choice) for choice in choices.get(name, ())]
        if isinstance(value, str) and allowed and value not in allowed:
            raise UsageError(f"{path}: {name}: {json.dumps(value)} is not one of {', '.join(allowed)}")
        if isinstance(value, str) and name in conversions:  # as the command line would convert it
            try:
                conversions[name](value)
            except (ValueError, TypeError, argparse.ArgumentTypeError):
                hint = type_name(hints[name]) if name in hints else conversions[name].__name__
                raise UsageError(f"{path}: {name}: {json.dumps(value)} is not a value of type {hint}") from None
    return values


def fits(value, hint) -> bool:
    """Whether a recipe's value (a YAML or JSON scalar, list or mapping) is one of the type `hint`."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, argument) for argument in arguments)
    if origin is typing.Literal:
        return value in arguments
    if origin in (list, tuple):
        return isinstance(value, list) and (not arguments or all(fits(item, arguments[0]) for item in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return value in {member.value for member in hint}
    if hint in (str, Path):
        return isinstance(value, str)
    return True  # another class (of transformers' or accelerate's): theirs to check


def type_name(hint) -> str:
    """A type as the error shows it: `int`, `str | None`, `list[str]`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(type_name(argument) for argument in typing.get_args(hint))
    if hint is type(None):
        return "None"
    return hint.__name__ if isinstance(hint, type) and not typing.get_args(hint) else str(hint).replace("typing.", "")


def given_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The flags that a recipe file or the command line sets; the others keep their defaults (this replaces the
    parser's defaults: parse with it before)."""
    given = set()
    if argv and argv[0].endswith(RECIPE_SUFFIXES):
        given = set(read_recipe(argv[0], parser))
        argv = argv[1:]
    unset = object()
    parser.set_defaults(**{action.dest: unset for action in parser._actions})
    namespace, _ = parser.parse_known_args(argv)
    return given | {name for name, value in vars(namespace).items() if value is not unset}


# Trainer flags of transformers 4.x that 5.x has no more, and what stands for each (run scripts of 4.x pass them).
FORMER_FLAGS = {
    "evaluation_strategy": "--eval_strategy",
    "group_by_length": "--train_sampling_strategy group_by_length",
    "no_cuda": "--use_cpu",
    "per_gpu_eval_batch_size": "--per_device_eval_batch_size",
    "per_gpu_train_batch_size": "--per_device_train_batch_size",
    "warmup_ratio": "--warmup_steps with a value below 1 (the share of the training steps)",
}


def unknown_flag_hint(name: str) -> str:
    """For a flag name (no dashes) that transformers 4.x had: what to use instead, as `; ...` to end a message."""
    return f"; transformers 5 has no --{name}: use {FORMER_FLAGS[name]}" if name in FORMER_FLAGS else ""


def refuse_unknown_arguments(parser: argparse.ArgumentParser, argv: list[str], script: str, expected: str) -> None:
    """UsageError naming the first word of `argv` that is no argument of the CLI `script` nor a flag's value (an
    HfArgumentParser would list every such word as "not used by the HfArgumentParser"); `expected` says what is."""
    _, unknown = parser.parse_known_args(argv)
    if not unknown:
        return
    word = unknown[0].split("=")[0]
    if word.startswith("-"):
        raise UsageError(f"unknown flag {word} (python {script} --help lists them){unknown_flag_hint(word[2:])}")
    raise UsageError(f"unexpected argument {word}: expected {expected}")


def documented_arguments(cls: type) -> dict[str, str]:
    """Each `name: text` entry of the Args section of the class's docstring (and its parents'); a text runs on over
    the lines indented below its first."""
    documented = {}
    for ancestor in reversed(cls.__mro__):
        entries = re.findall(r"^ {4}(\w+): (.+(?:\n {8}.+)*)$", inspect.getdoc(ancestor) or "", re.MULTILINE)
        documented.update((name, " ".join(text.split())) for name, text in entries)
    return documented


def argument_dataclass(cls: type) -> type:
    """@dataclass for a CLI's arguments (HfArgumentParser's), each field's --help its entry in the docstring's Args."""
    documented = documented_arguments(cls)
    for name in cls.__annotations__:
        value = cls.__dict__.get(name, dataclasses.MISSING)
        argument = value if isinstance(value, dataclasses.Field) else dataclasses.field(default=value)
        argument.metadata = types.MappingProxyType({**argument.metadata, "help": documented[name]})
        setattr(cls, name, argument)
    return dataclasses.dataclass(cls)
