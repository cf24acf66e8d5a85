"""The GPU check of the training-speed and decoding-speed issues: one command, at most 8 minutes on one H100.

    make gpu-check OUT=gpu-check-results           # python3 bench/gpu_check.py gpu-check-results --data <multi30k>
    GPU_CHECK_DRY=1 make gpu-check OUT=/tmp/dry    # the same steps shrunk on a CPU: tiny shapes, 300 lines, seconds

Each step is a subprocess with its own time slot inside one hard overall budget; a step that fails or runs out of time
is reported and the others still run:

    train         train.py recipes/multi30k_de_en.yaml, stopped after 4 minutes of training (--max_train_seconds),
                  with the model at 90 s kept (--save_at_seconds)
    eval-early    eval.py on test_2016_flickr: the model at 90 s (a recipe that ends sooner: eval-final's, at its time)
    eval-final    eval.py on test_2016_flickr: the average of the last 3 checkpoints (as `make multi30k`)
    bench-train   bench/bench_speed.py's training rows at the base shape (ours eager, compiled and projecting every
                  position, Marian, ...)
    bench-decode  bench_speed.py's decoding rows: generate() eager (autocast, bf16 weights) and compiled with a
                  static cache in bf16, Marian generate() both ways, CTranslate2 where the installed wheel runs on CUDA
    train-base    train.py's real tokens/s at the base shape: bench_speed.py's 16,384-token batches, 20 s of training

It prints one summary table and writes it to OUT/summary.json (each step's outputs and log under OUT; OUT's earlier
results are replaced). Nothing is fetched from the network.
"""

import argparse
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Module -> the pip package that provides it. CTranslate2 is optional: without it the check has no CTranslate2 rows.
REQUIRED = {
    "torch": "torch",
    "transformers": "transformers",
    "accelerate": "accelerate",
    "tokenizers": "tokenizers",
    "sacrebleu": "sacrebleu",
    "matplotlib": "matplotlib",
    "yaml": "pyyaml",
    "datasets": "datasets",
    "evaluate": "evaluate",
    "num2words": "num2words",
}
OPTIONAL = {"ctranslate2": "ctranslate2"}
RECIPE = ROOT / "recipes" / "multi30k_de_en.yaml"
SOURCE_LANG, TARGET_LANG = "de", "en"
DATA_FILES = ("train.jsonl", "validation.jsonl", "test_2016_flickr.jsonl")
STEPS = ("train", "eval-early", "eval-final", "bench-train", "bench-decode", "train-base")
AVERAGE_LAST = 3  # `make multi30k` scores the average of the last 3 checkpoints (sec. 6.1)
DECODING = ["--length_penalty", "1.0"]  # `make multi30k`'s, chosen on validation (BENCHMARKS.md)
SUMMARY_MARGIN_SECONDS = 10  # kept at the end of the budget for the summary


@dataclass(frozen=True)
class Plan:
    """The sizes of one check: the real one on a GPU, or the dry one, the same steps shrunk for a CPU."""

    budget_seconds: float  # the whole check, a hard limit
    train_seconds: float  # the recipe run's --max_train_seconds
    early_seconds: float  # its --save_at_seconds: the model scored against the 90 s target
    base_train_seconds: float  # the base-shape run's --max_train_seconds
    lines: tuple[int, int, int] | None  # the first lines of each DATA_FILES file (None: all of them)
    bench: tuple[str, ...]  # bench_speed.py's arguments
    train: tuple[str, ...]  # train.py's arguments after the recipe's, for both runs
    base_shape: tuple[str, ...]  # train.py's arguments for the base shape
    environment: tuple[tuple[str, str], ...]  # set for every step
    slots: tuple[tuple[str, float, float], ...]  # (step, most seconds, seconds kept for it while earlier steps run)


GPU = Plan(
    budget_seconds=480,
    # The stop comes at the end of a step after 235 s; the epoch-end evaluation and checkpoint follow it.
    train_seconds=235,
    early_seconds=90,
    base_train_seconds=20,
    lines=None,
    # --every-position: the labelled-only output layer's share, and whether its mask's host sync costs on a GPU.
    bench=("--device", "cuda", "--shape", "base", "--repeats", "5", "--warmup", "1", "--compiled-models", "ours")
    + ("--every-position",),
    train=(),
    # Batches of bench_speed.py's base-shape tokens (128 x 64 a side): the recipe's 8,192 would leave the GPU idle.
    base_shape=("--preset", "base", "--vocab_size", "32000", "--max_tokens", "16384"),
    environment=(),
    slots=(
        ("train", 300, 265),
        ("eval-early", 60, 25),
        ("eval-final", 60, 30),
        ("bench-train", 120, 50),
        # ~115 s on an H100: the float32 check compiles greedy and beam 4, then the bf16 graphs compile
        ("bench-decode", 240, 40),
        ("train-base", 90, 20),  # 75 s on an H100: a 32k BPE vocabulary, the corpus tokenized, 20 s of training
    ),
)
DRY = Plan(
    budget_seconds=170,
    train_seconds=8,
    early_seconds=3,
    base_train_seconds=3,
    lines=(300, 100, 100),
    bench=("--device", "cpu", "--shape", "tiny", "--threads", "1", "--repeats", "1", "--warmup", "1", "--compile")
    + ("--compile-backend", "eager", "--compiled-models", "ours", "--every-position"),  # eager: dynamo, no codegen
    # Epochs enough for the time budget to stop the run, as it stops the real one.
    train=("--preset", "tiny", "--vocab_size", "1000", "--max_tokens", "512", "--warmup_steps", "400")
    + ("--num_train_epochs", "100", "--logging_steps", "5"),
    base_shape=("--preset", "tiny", "--vocab_size", "1000"),  # bench_speed.py's tiny shape
    # One thread a process: on two shared cores, two threads each slow a tiny model's steps tens of times.
    environment=(("CUDA_VISIBLE_DEVICES", ""), ("OMP_NUM_THREADS", "1")),
    slots=(
        ("train", 60, 30),
        ("eval-early", 40, 15),
        ("eval-final", 40, 15),
        ("bench-train", 60, 15),
        ("bench-decode", 60, 20),
        ("train-base", 40, 15),
    ),
)


@dataclass(frozen=True)
class Target:
    """An issue's target: measurements[measurement] >= at_least, within measurements[seconds] <= most_seconds."""

    issue: int
    text: str
    measurement: str
    at_least: float
    seconds: str | None = None
    most_seconds: float | None = None

    def evaluate(self, measurements: dict) -> dict:
        value = measurements[self.measurement]
        seconds = measurements[self.seconds] if self.seconds else None
        met = None
        if value is not None and (self.seconds is None or seconds is not None):
            met = value >= self.at_least and (self.seconds is None or seconds <= self.most_seconds)
        return {
            "issue": self.issue,
            "target": self.text,
            "measurement": self.measurement,
            "measured": value,
            "seconds": seconds,
            "met": met,
        }


TARGETS = (
    Target(14, "Multi30k >= 37 BLEU (test_2016) in <= 90 s of training", "bleu_early", 37.0, "early_seconds", 90),
    Target(
        14, "full GPU recipe >= 40 BLEU (test_2016) in <= 4 min of training", "bleu_final", 40.0, "train_seconds", 240
    ),
    Target(
        14, "train.py's real tokens/s at the base shape >= 50% of bench's compiled real rate", "base_over_bench", 0.5
    ),
    Target(14, "bench's compiled base-shape training >= 1.2M tokens/s", "bench_compiled_tokens_per_second", 1.2e6),
    Target(16, "beam 4 (base shape, bf16): our fastest path >= 3x MarianMTModel", "beam4_fastest_over_marian", 3.0),
)


def cuda12_cublas_folders(nvidia: list[str]) -> list[str]:
    """The folders of pip's nvidia-cublas-cu12 (libcublas.so.12) in the `nvidia` namespace package's folders. The
    ctranslate2 wheel links the CUDA 12 runtime in but loads cuBLAS 12 by name when it first computes; torch built
    for CUDA 13 brings cuBLAS 13 only. The bench steps find the wheel's library on LD_LIBRARY_PATH."""
    found = (library.parent for folder in nvidia for library in Path(folder).glob("*/lib/libcublas.so.12"))
    return list(dict.fromkeys(str(folder) for folder in found))


def nvidia_folders() -> list[str]:
    """Where pip's nvidia-* packages are installed (one `nvidia` namespace package over the site folders)."""
    spec = importlib.util.find_spec("nvidia")
    return list(spec.submodule_search_locations or []) if spec else []


def missing_packages() -> list[str]:
    return [package for module, package in REQUIRED.items() if importlib.util.find_spec(module) is None]


def check_setup(dry: bool, data: Path) -> None:
    """The data and, for the real check, a CUDA device, before any step starts."""
    from vanilla_cli import UsageError

    absent = [name for name in DATA_FILES if not (data / name).is_file()]
    if absent:
        raise UsageError(f"{data}: no {', '.join(absent)}; name the Multi30k folder with MULTI30K=... (make) or --data")
    if not dry:
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"torch {torch.__version__} sees no CUDA device; GPU_CHECK_DRY=1 runs the check on a CPU")


def first_lines(data: Path, folder: Path, counts: tuple[int, int, int]) -> Path:
    """The dry run's corpus: the first lines of each Multi30k file."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in zip(DATA_FILES, counts, strict=True):
        with open(data / name, encoding="utf-8") as source:
            lines = [line for _, line in zip(range(count), source, strict=False)]
        (folder / name).write_text("".join(lines), encoding="utf-8")
    return folder


@dataclass
class StepResult:
    status: str  # ok, failed, timed out, skipped
    seconds: float = 0.0
    timeout_seconds: float | None = None
    returncode: int | None = None
    detail: str = ""  # why it failed or was skipped
    log: str | None = None


def last_error(log: Path) -> str:
    """The line that says what went wrong: an `error:` line, else the last line (a traceback's exception)."""
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1][:300]


def run_step(name: str, command: list[str], timeout: float, out: Path, environment: dict) -> StepResult:
    """Runs one step in its own process group, its output in OUT/logs/<name>.log; killed whole at the timeout."""
    log = out / "logs" / f"{name}.log"
    print(f"[gpu-check] {name}: running (at most {timeout:.0f} s; log {log})", flush=True)
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        handle.write(" ".join(command) + "\n")
        handle.flush()
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=environment, start_new_session=True
        )
        try:
            returncode = process.wait(timeout=timeout)
        except BaseException:  # the timeout, or Ctrl-C: the step's processes go with it (compile workers included)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
                raise
            returncode = None
    seconds = time.monotonic() - start
    if returncode is None:
        result = StepResult("timed out", seconds, timeout, None, f"stopped after {timeout:.0f} s", str(log))
    elif returncode != 0:
        result = StepResult("failed", seconds, timeout, returncode, last_error(log), str(log))
    else:
        result = StepResult("ok", seconds, timeout, 0, "", str(log))
    print(f"[gpu-check] {name}: {result.status} in {seconds:.1f} s {result.detail}".rstrip(), flush=True)
    return result


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def epoch_rates(state: dict) -> tuple[float | None, float | None]:
    """Real tokens/s in the first epoch and after it, from the rates train.py logs for each window of logging_steps
    steps (their harmonic mean: the windows hold about equal tokens, so that is tokens over time). A window that
    spans the end of the first epoch counts in neither."""
    if not state.get("num_train_epochs"):
        return None, None
    steps_per_epoch = state["max_steps"] / state["num_train_epochs"]
    first, later, start = [], [], 0
    for entry in state.get("log_history", []):
        if "tokens_per_second" not in entry:
            continue
        if entry["step"] <= steps_per_epoch:
            first.append(entry["tokens_per_second"])
        elif start >= steps_per_epoch:
            later.append(entry["tokens_per_second"])
        start = entry["step"]
    return tuple(len(rates) / sum(1 / rate for rate in rates) if rates else None for rates in (first, later))


def training_record(run: Path) -> dict:
    """A train.py run's seconds and tokens/s (real: source + target tokens that are not padding; padded: all), as
    train.py reports them in all_results.json, and its steps and the rates of its first epoch and of the later ones
    from trainer_state.json."""
    from vanilla_hub import TRAIN_RESULTS

    results = read_json(run / TRAIN_RESULTS)
    state = read_json(run / "trainer_state.json")
    if results is None or state is None:
        return {}
    config = read_json(run / "config.json") or {}
    first_epoch, later_epochs = epoch_rates(state)
    return {
        "train_seconds": finite(results.get("train_runtime")),
        "stopped_by_budget": state["global_step"] < state["max_steps"],
        "steps": state["global_step"],
        "epochs": finite(state["epoch"]),
        "vocab_size": config.get("vocab_size"),
        "real_tokens_per_second": finite(results.get("train_tokens_per_second")),
        "padded_tokens_per_second": finite(results.get("train_padded_tokens_per_second")),
        "first_epoch_tokens_per_second": finite(first_epoch),
        "later_epochs_tokens_per_second": finite(later_epochs),
    }


def bench_rows(path: Path) -> dict:
    """bench_speed.py's rows ({metric: {column: value}}) from its --json file, the rows it finished."""
    record = read_json(path)
    rows = record["rows"] if record else {}
    return {metric: {name: finite(value) for name, value in values.items()} for metric, values in rows.items()}


MARIAN_GENERATE = ("marian", "marian, bf16")  # MarianMTModel generate(): under autocast, and with bf16 weights


def decoding_ratios(rows: dict) -> dict:
    """Each decoder's sentences/s over Marian generate()'s fastest (of MARIAN_GENERATE's rows), greedy and beam 4."""
    ratios = {}
    for metric in ("greedy sent/s", "beam-4 sent/s"):
        values = rows.get(metric, {})
        marian = max((values.get(name) or 0 for name in MARIAN_GENERATE), default=0)
        if marian:
            ratios[metric] = {
                name: value / marian for name, value in values.items() if name not in MARIAN_GENERATE and value
            }
    return ratios


def measure(out: Path, plan: Plan) -> dict:
    """Every figure the summary reports (None where its step did not produce it)."""
    train = training_record(out / "multi30k")
    base = training_record(out / "train-base")
    early, final = read_json(out / "eval_early.json"), read_json(out / "eval_final.json")
    bench = bench_rows(out / "bench_train.json")
    trained = bench.get("train tokens/s", {})  # source + target positions, padding included
    trained_real = bench.get("train real tokens/s", {})  # the tokens that are not padding, as train.py counts them
    decode_rows = bench_rows(out / "bench_decode.json")
    ratios = decoding_ratios(decode_rows)
    beam4 = ratios.get("beam-4 sent/s", {})
    ours = [value for name, value in beam4.items() if name.startswith("ours")]
    compiled_rate = finite(trained.get("ours, compiled"))
    compiled_real_rate = finite(trained_real.get("ours, compiled"))
    base_rate = base.get("real_tokens_per_second")
    early_state = read_json(early_model(out, plan) / "trainer_state.json") or {}
    early_seconds, early_step, early_eval = plan.early_seconds, early_state.get("global_step"), early
    if finished_before_early(train, out, plan):  # the recipe's own model is the one trained within the 90 s
        early_seconds, early_step, early_eval = min(train["train_seconds"], plan.early_seconds), train["steps"], final
    return {
        "train_seconds": train.get("train_seconds"),
        "train_stopped_by_budget": train.get("stopped_by_budget"),
        "train_steps": train.get("steps"),
        "train_epochs": train.get("epochs"),
        "train_real_tokens_per_second": train.get("real_tokens_per_second"),
        "train_padded_tokens_per_second": train.get("padded_tokens_per_second"),
        "train_first_epoch_tokens_per_second": train.get("first_epoch_tokens_per_second"),
        "train_later_epochs_tokens_per_second": train.get("later_epochs_tokens_per_second"),
        "early_seconds": early_seconds,
        "early_step": early_step,
        "bleu_early": finite(early_eval["bleu"]) if early_eval else None,
        "bleu_final": finite(final["bleu"]) if final else None,
        "final_model": Path(final["model"]).name if final else None,
        "eval_final_sentences_per_second": finite(final["sentences_per_second"]) if final else None,
        "base_vocab_size": base.get("vocab_size"),
        "base_real_tokens_per_second": base_rate,
        "base_padded_tokens_per_second": base.get("padded_tokens_per_second"),
        "bench_train_tokens_per_second": trained,
        "bench_train_real_tokens_per_second": trained_real,
        "bench_compiled_tokens_per_second": compiled_rate,
        "bench_compiled_real_tokens_per_second": compiled_real_rate,
        "base_over_bench": base_rate / compiled_real_rate if base_rate and compiled_real_rate else None,
        "decoding_sentences_per_second": decode_rows,
        "decoding_over_marian": ratios,
        "beam4_fastest_over_marian": max(ours) if ours else None,
    }


def step_details(measurements: dict, plan: Plan) -> dict[str, str]:
    """One line per step that ran to the end: what it measured."""
    m = {name: format_value(value, name) for name, value in measurements.items()}
    stopped = "stopped at" if measurements["train_stopped_by_budget"] else "finished within"
    return {
        "train": f"{m['train_seconds']} s of training ({stopped} the {plan.train_seconds:g} s budget), "
        f"{m['train_steps']} steps, {m['train_epochs']} epochs, {m['train_real_tokens_per_second']} real tokens/s "
        f"({m['train_padded_tokens_per_second']} padded)",
        "eval-early": f"BLEU {m['bleu_early']}, the model at {plan.early_seconds:g} s (step {m['early_step']})",
        "eval-final": f"BLEU {m['bleu_final']}, {m['final_model']}",
        "bench-train": f"ours compiled: {m['bench_compiled_tokens_per_second']} tokens/s "
        f"({m['bench_compiled_real_tokens_per_second']} real)",
        "train-base": f"{m['base_real_tokens_per_second']} real tokens/s ({m['base_padded_tokens_per_second']} padded, "
        f"vocabulary {m['base_vocab_size']})",
        "bench-decode": f"beam 4: our fastest path {m['beam4_fastest_over_marian']} Marian generate()",
    }


def early_model(out: Path, plan: Plan) -> Path:
    from vanilla_time_budget import model_at_folder

    return model_at_folder(out / "multi30k", plan.early_seconds)


def finished_before_early(train: dict, out: Path, plan: Plan) -> bool:
    """Whether the recipe ran to its end within --save_at_seconds, so that no model was kept at that time: its last
    step ended before then (the model is kept at the first step that ends after), though the last evaluation and
    save may take train_runtime past it."""
    finished = train.get("train_seconds") is not None and not train["stopped_by_budget"]
    return finished and not (early_model(out, plan) / "config.json").is_file()


def step_commands(out: Path, data: Path, plan: Plan, ctranslate2: bool) -> dict[str, Callable[[], list[str] | str]]:
    """Each step's command line, built when the step starts (a string: why the step is skipped)."""
    python = sys.executable
    test = ["--test_file", str(data / DATA_FILES[2]), "--source_lang", SOURCE_LANG, "--target_lang", TARGET_LANG]
    corpus = ["--train_file", str(data / DATA_FILES[0]), "--validation_file", str(data / DATA_FILES[1]), *test]
    run = out / "multi30k"
    bench = [python, str(ROOT / "bench" / "bench_speed.py"), *plan.bench]
    if not ctranslate2:
        bench.append("--no-ctranslate2")

    def evaluation(model: list[str], name: str) -> list[str]:
        """eval.py on the test set, its report in OUT/eval_<name>.json and its translations beside it."""
        files = [
            "--results_file",
            str(out / f"eval_{name}.json"),
            "--predictions_file",
            str(out / f"predictions_{name}.txt"),
        ]
        return [python, str(ROOT / "eval.py"), *model, *test, *DECODING, *files]

    def train():
        budget = ["--max_train_seconds", str(plan.train_seconds), "--save_at_seconds", str(plan.early_seconds)]
        return [python, str(ROOT / "train.py"), str(RECIPE), *corpus, *plan.train, *budget, "--output_dir", str(run)]

    def eval_early():
        model = early_model(out, plan)
        if finished_before_early(training_record(run), out, plan):
            return f"the recipe finished within {plan.early_seconds:g} s: eval-final scores its model for that target"
        if not (model / "config.json").is_file():
            return f"the train step kept no model at {plan.early_seconds:g} s ({model})"
        return evaluation(["--model", str(model)], "early")

    def eval_final():
        from vanilla_files import complete_checkpoints

        checkpoints = complete_checkpoints(run) if run.is_dir() else []
        if checkpoints:  # `make multi30k`'s average, or of as many as a stopped run left
            model = ["--model", str(run), "--average_last", str(min(AVERAGE_LAST, len(checkpoints)))]
        elif (run / "config.json").is_file():
            model = ["--model", str(run)]
        else:
            return f"the train step left no model or checkpoint in {run}"
        return evaluation(model, "final")

    def train_base():
        budget = ["--max_train_seconds", str(plan.base_train_seconds), "--eval_strategy", "no", "--save_strategy", "no"]
        output = ["--output_dir", str(out / "train-base")]
        return [python, str(ROOT / "train.py"), str(RECIPE), *corpus, *plan.train, *plan.base_shape, *budget, *output]

    return {
        "train": train,
        "eval-early": eval_early,
        "eval-final": eval_final,
        "bench-train": lambda: [*bench, "--skip-generation", "--json", str(out / "bench_train.json")],
        "train-base": train_base,
        "bench-decode": lambda: [*bench, "--skip-training", "--json", str(out / "bench_decode.json")],
    }


def clear_earlier_results(out: Path) -> None:
    for name in ("multi30k", "train-base", "logs", "data"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("summary.json", "eval_early.json", "eval_final.json", "bench_train.json", "bench_decode.json"):
        (out / name).unlink(missing_ok=True)


def format_value(value, name: str = "") -> str:
    """A figure for the table: BLEU to two decimals, ratios as 1.23x, large numbers with thousands separators."""
    if value is None:
        return "-"
    if not isinstance(value, float):
        return str(value)
    if "bleu" in name:
        return f"{value:.2f}"
    if name.endswith(("over_marian", "over_bench")):
        return f"{value:.2f}x"
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def print_summary(summary: dict) -> None:
    measurements = summary["measurements"]
    kind = "dry run on a CPU" if summary["dry"] else "GPU"
    print(f"\nGPU check ({kind}): {summary['seconds']:.0f} s of the {summary['budget_seconds']:.0f} s budget")
    print("\n| step | status | seconds | detail |\n|---|---|---|---|")
    for name, step in summary["steps"].items():
        print(f"| {name} | {step['status']} | {step['seconds']:.1f} | {step['detail']} |")
    m = {name: format_value(value, name) for name, value in measurements.items()}
    rows = [
        ("recipe training seconds", m["train_seconds"]),
        ("recipe steps / epochs", f"{m['train_steps']} / {m['train_epochs']}"),
        (
            "recipe real / padded tokens/s",
            f"{m['train_real_tokens_per_second']} / {m['train_padded_tokens_per_second']}",
        ),
        (
            "recipe real tokens/s, first epoch / later epochs",
            f"{m['train_first_epoch_tokens_per_second']} / {m['train_later_epochs_tokens_per_second']}",
        ),
        (f"BLEU test_2016, the model at {measurements['early_seconds']:.4g} s", m["bleu_early"]),
        (f"BLEU test_2016, final ({m['final_model']})", m["bleu_final"]),
        (
            "train.py real / padded tokens/s, base shape",
            f"{m['base_real_tokens_per_second']} / {m['base_padded_tokens_per_second']}",
        ),
    ]
    real = measurements["bench_train_real_tokens_per_second"]
    rows += [
        (f"bench train tokens/s (real), {name}", f"{format_value(value)} ({format_value(real.get(name))})")
        for name, value in measurements["bench_train_tokens_per_second"].items()
    ]
    for metric, values in measurements["decoding_sentences_per_second"].items():
        ratios = measurements["decoding_over_marian"].get(metric, {})
        for name, value in values.items():
            ratio = f" ({ratios[name]:.2f}x Marian)" if name in ratios else ""
            rows.append((f"bench {metric}, {name}", f"{format_value(value)}{ratio}"))
    print("\n| measurement | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\n| issue | target | measured | met |\n|---|---|---|---|")
    for target in summary["targets"]:
        met = {True: "yes", False: "no", None: "not measured"}[target["met"]]
        measured = format_value(target["measured"], target["measurement"])
        seconds = f" after {target['seconds']:.1f} s" if target["seconds"] is not None else ""
        print(f"| {target['issue']} | {target['target']} | {measured}{seconds} | {met} |")
    if summary["dry"]:
        print("\nA dry run checks that every step runs and every target is measured; its figures are a CPU's.")
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"\nwritten: {summary['summary_file']}")


def write_summary(path: Path, summary: dict) -> None:
    from vanilla_files import write_text_atomically

    write_text_atomically(path, json.dumps(summary, indent=2, allow_nan=False) + "\n")


def run_check(out: Path, data: Path, dry: bool, start: float) -> dict:
    """Runs every step inside the plan's budget, counted from `start`, and returns the summary."""
    plan = DRY if dry else GPU
    deadline = start + plan.budget_seconds - SUMMARY_MARGIN_SECONDS
    out.mkdir(parents=True, exist_ok=True)
    clear_earlier_results(out)
    (out / "logs").mkdir()
    if plan.lines is not None:
        data = first_lines(data, out / "data", plan.lines)
    ctranslate2 = importlib.util.find_spec("ctranslate2") is not None
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    environment.update(plan.environment)
    cublas = cuda12_cublas_folders(nvidia_folders())
    if cublas:
        environment["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [*cublas, environment.get("LD_LIBRARY_PATH")]))
    commands = step_commands(out, data, plan, ctranslate2)
    steps = {}
    for index, (name, most, _) in enumerate(plan.slots):
        kept = sum(reserve for _, _, reserve in plan.slots[index + 1 :])
        timeout = min(most, deadline - time.monotonic() - kept)
        command = commands[name]()
        if isinstance(command, str):
            steps[name] = StepResult("skipped", detail=command)
        elif timeout < plan.slots[index][2] / 2:
            steps[name] = StepResult("skipped", detail=f"no time left in the {plan.budget_seconds:g} s budget")
        else:
            steps[name] = run_step(name, command, timeout, out, environment)
    measurements = measure(out, plan)
    for name, detail in step_details(measurements, plan).items():
        if name in steps and steps[name].status == "ok":
            steps[name].detail = detail
    notes = (
        []
        if ctranslate2
        else [f"no CTranslate2 rows: ctranslate2 is not installed (pip install {OPTIONAL['ctranslate2']})"]
    )
    for bench in ("bench_train.json", "bench_decode.json"):  # an engine left out, and why; the compiled tokens
        notes += [note for note in (read_json(out / bench) or {}).get("notes", []) if note not in notes]
    return {
        "dry": dry,
        "seconds": time.monotonic() - start,
        "budget_seconds": plan.budget_seconds,
        "plan": asdict(plan),
        "data": str(data),
        "steps": {name: asdict(step) for name, step in steps.items()},
        "measurements": measurements,
        "targets": [target.evaluate(measurements) for target in TARGETS],
        "notes": notes,
        "summary_file": str(out / "summary.json"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the folder for the summary (summary.json), the logs and the runs")
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "data" / "multi30k", help="the Multi30k folder"
    )
    parser.add_argument(
        "--dry",
        action="store_true",
        default=os.environ.get("GPU_CHECK_DRY", "") not in ("", "0"),
        help="the same steps shrunk on a CPU (default: set by GPU_CHECK_DRY=1)",
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    missing = missing_packages()  # before the project's modules, which import them
    if missing:
        print(
            f"error: missing Python packages: {', '.join(missing)}; install them with: "
            f"{sys.executable} -m pip install {' '.join(missing)}",
            file=sys.stderr,
        )
        sys.exit(2)
    from vanilla_cli import exit_on_usage_error

    try:
        exit_on_usage_error(gpu_check)(args.out, args.data, args.dry, start)
    except KeyboardInterrupt:
        print(f"interrupted: the logs so far are in {args.out / 'logs'}", file=sys.stderr)
        sys.exit(130)


def gpu_check(out: Path, data: Path, dry: bool, start: float) -> None:
    check_setup(dry, data)
    summary = run_check(out, data, dry, start)
    write_summary(out / "summary.json", summary)
    print_summary(summary)


if __name__ == "__main__":
    main()
