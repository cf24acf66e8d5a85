"""bench/gpu_check.py (`make gpu-check`): the dry run end to end on a CPU, and its refusals before any step starts."""

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from num2words import num2words

from vanilla_cli import cpu_has_bf16_kernels

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


def write_corpus(folder: Path) -> Path:
    """German -> English number words in Multi30k's files and layout: 300 training, 100 validation, 100 test pairs."""
    folder.mkdir()
    numbers = {
        "train.jsonl": range(1, 301),
        "validation.jsonl": range(301, 401),
        "test_2016_flickr.jsonl": range(401, 501),
    }
    for name, span in numbers.items():
        pairs = [{"translation": {"de": num2words(n, lang="de"), "en": num2words(n, lang="en")}} for n in span]
        (folder / name).write_text("".join(json.dumps(pair) + "\n" for pair in pairs), encoding="utf-8")
    return folder


def run_make(out: Path, data: Path, **environment: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, **environment)
    env.pop("MAKEFLAGS", None)
    command = [
        "make",
        "--no-print-directory",
        "gpu-check",
        f"PYTHON={sys.executable}",
        f"OUT={out}",
        f"MULTI30K={data}",
    ]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def numbers_in(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from numbers_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers_in(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@pytest.mark.slow
def test_dry_gpu_check_runs_every_step_and_measures_every_target(tmp_path):
    data = write_corpus(tmp_path / "multi30k")
    start = time.monotonic()
    result = run_make(tmp_path / "out", data, GPU_CHECK_DRY="1")
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert seconds < gpu_check.DRY.budget_seconds

    summary = json.loads(
        (tmp_path / "out" / "summary.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON")
    )
    assert summary["dry"] is True
    assert {name: step["status"] for name, step in summary["steps"].items()} == dict.fromkeys(gpu_check.STEPS, "ok")
    assert all(math.isfinite(number) for number in numbers_in(summary))
    # Every target measured and judged, whatever the figures of a CPU.
    assert [target["measurement"] for target in summary["targets"]] == [t.measurement for t in gpu_check.TARGETS]
    assert all(target["met"] in (True, False) for target in summary["targets"])
    measurements = summary["measurements"]
    assert measurements["train_stopped_by_budget"] is True
    assert gpu_check.DRY.train_seconds <= measurements["train_seconds"] < gpu_check.DRY.train_seconds + 30
    assert 0 < measurements["early_step"] < measurements["train_steps"]
    assert measurements["final_model"] == f"averaged-last-{gpu_check.AVERAGE_LAST}"
    for name in (
        "train_real_tokens_per_second",
        "train_first_epoch_tokens_per_second",
        "base_real_tokens_per_second",
        "bench_compiled_tokens_per_second",
    ):
        assert measurements[name] > 0, name
    # Windows after the first epoch: as many as the seconds of training reach on the machine, maybe none.
    later = measurements["train_later_epochs_tokens_per_second"]
    assert later is None or later > 0
    # train.py's own tokens/s, as each run reported them in all_results.json; the recipe's bf16 without --use_cpu.
    for run, prefix in (("multi30k", "train"), ("train-base", "base")):
        results = json.loads((tmp_path / "out" / run / "all_results.json").read_text())
        assert measurements[f"{prefix}_real_tokens_per_second"] == results["train_tokens_per_second"]
        assert measurements[f"{prefix}_padded_tokens_per_second"] == results["train_padded_tokens_per_second"]
        assert measurements[f"{prefix}_padded_tokens_per_second"] >= measurements[f"{prefix}_real_tokens_per_second"]
    # bench_speed.py on a CPU: float32 training rows of both models, and bf16 autocast ones where the CPU has bf16
    # kernels; each pair's ratio in its JSON.
    bench = json.loads((tmp_path / "out" / "bench_train.json").read_text())
    trained, ratios = bench["rows"]["train tokens/s"], bench["ratios"]["train tokens/s"]
    bf16_rows = cpu_has_bf16_kernels()
    assert ("ours, bf16 autocast" in trained) == ("marian, bf16 autocast" in trained) == bf16_rows
    pairs = [("ours", "marian")] + ([("ours, bf16 autocast", "marian, bf16 autocast")] if bf16_rows else [])
    for ours, marian in pairs:
        assert ratios[f"{ours} / {marian}"] == pytest.approx(trained[ours] / trained[marian])
    # The real-token row times the same steps: its rates are the position rates times the batch's real fraction,
    # the one train.py's real tokens/s is compared with.
    real = bench["rows"]["train real tokens/s"]
    fractions = {name: real[name] / trained[name] for name in trained}
    assert 0.5 < fractions["ours"] < 1
    assert all(fraction == pytest.approx(fractions["ours"]) for fraction in fractions.values())
    compiled_real = real["ours, compiled"]
    assert measurements["bench_compiled_real_tokens_per_second"] == compiled_real
    assert measurements["base_over_bench"] == pytest.approx(measurements["base_real_tokens_per_second"] / compiled_real)
    for step in ("train", "train-base"):
        command = (tmp_path / "out" / "logs" / f"{step}.log").read_text().splitlines()[0].split()
        assert "--use_cpu" not in command and "recipes/multi30k_de_en.yaml" in " ".join(command)
    for metric in ("greedy sent/s", "beam-4 sent/s"):  # eager, compiled static cache, CTranslate2: each over Marian
        ratios = measurements["decoding_over_marian"][metric]
        assert {"ours", "ours, compiled static", "ours, CT2 float32", "ours, CT2 int8"} <= set(ratios)
    # Every engine ran (no note of one left out), and the compiled decoding emitted the dynamic cache's tokens; a
    # CPU without bf16 kernels is said once, though both bench steps say it.
    no_bf16 = [] if bf16_rows else [next(note for note in bench["notes"] if note.startswith("no bf16 rows: "))]
    assert summary["notes"] == no_bf16 + [
        "compiled static-cache decoding, float32: 100.0% of the sequences the dynamic cache's (greedy), "
        "100.0% of the sequences the dynamic cache's (beam 4)"
    ]
    assert f"note: {summary['notes'][0]}" in result.stdout
    # The table on stdout: every step and every target.
    for name in gpu_check.STEPS:
        assert f"| {name} | ok |" in result.stdout
    for target in gpu_check.TARGETS:
        assert target.text in result.stdout


def test_the_first_epochs_rate_and_the_later_ones_come_from_the_logged_windows():
    """Windows of 10 steps, 25 steps an epoch: steps 1-20 are the first epoch's, 21-30 span its end, 31-50 are later."""
    rates = [100.0, 300.0, 1000.0, 400.0, 400.0]
    history = [{"step": 10 * (index + 1), "tokens_per_second": rate} for index, rate in enumerate(rates)]
    history.insert(2, {"step": 25, "eval_loss": 3.0})  # an evaluation's entry has no rate
    state = {"max_steps": 50, "num_train_epochs": 2, "log_history": history}
    first, later = gpu_check.epoch_rates(state)
    assert first == pytest.approx(2 / (1 / 100 + 1 / 300))  # 20 windows' tokens over their time
    assert later == 400.0
    assert gpu_check.epoch_rates({**state, "log_history": history[:1]}) == (100.0, None)
    assert gpu_check.epoch_rates({"max_steps": 50}) == (None, None)


def test_decoding_is_compared_with_the_fastest_marian_generate_row():
    """On a GPU MarianMTModel decodes under autocast and with bf16 weights: each of ours is over the faster of the two,
    and the CTranslate2-converted Marian is a decoder like any other."""
    rows = {
        "beam-4 sent/s": {"ours": 30.0, "marian": 10.0, "marian, bf16": 15.0, "marian, CT2 bfloat16": 45.0},
        "greedy sent/s": {"ours": 20.0, "marian": 10.0},
    }
    ratios = gpu_check.decoding_ratios(rows)
    assert ratios == {
        "beam-4 sent/s": {"ours": 2.0, "marian, CT2 bfloat16": 3.0},
        "greedy sent/s": {"ours": 2.0},
    }
    assert gpu_check.decoding_ratios({"beam-4 sent/s": {"ours": 30.0}}) == {}


def test_gpu_check_names_the_missing_packages_and_the_pip_command(tmp_path):
    # -S: no site-packages, so none of the required packages is importable.
    command = [sys.executable, "-S", str(ROOT / "bench" / "gpu_check.py"), str(tmp_path / "out")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    packages = " ".join(gpu_check.REQUIRED.values())
    assert result.stderr.splitlines() == [
        f"error: missing Python packages: {', '.join(gpu_check.REQUIRED.values())}; install them with: "
        f"{sys.executable} -m pip install {packages}"
    ]
    assert not (tmp_path / "out").exists()


def test_gpu_check_without_a_gpu_refuses_in_one_line_and_names_the_dry_run(tmp_path):
    data = write_corpus(tmp_path / "multi30k")
    command = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), str(tmp_path / "out"), "--data", str(data)]
    env = {name: value for name, value in os.environ.items() if name != "GPU_CHECK_DRY"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: torch {torch.__version__} sees no CUDA device; GPU_CHECK_DRY=1 runs the check on a CPU"
    ]
    assert not (tmp_path / "out").exists()


def test_gpu_check_refuses_a_folder_without_multi30k_in_one_line(tmp_path):
    command = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), str(tmp_path / "out"), "--dry"]
    result = subprocess.run([*command, "--data", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {tmp_path}: no train.jsonl, validation.jsonl, test_2016_flickr.jsonl; name the Multi30k folder with "
        "MULTI30K=... (make) or --data"
    ]


def fake_steps(commands: dict) -> callable:
    """step_commands' stand-in: every step a quick `python -c` that succeeds, unless `commands` says otherwise."""
    quick = [sys.executable, "-c", "pass"]
    return lambda *args: {name: (lambda name=name: commands.get(name, quick)) for name in gpu_check.STEPS}


def test_a_failing_or_skipped_step_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    failing = [
        sys.executable,
        "-c",
        "import sys; print('loading'); print('error: no such recipe', file=sys.stderr); sys.exit(2)",
    ]
    monkeypatch.setattr(gpu_check, "step_commands", fake_steps({"train": failing, "eval-early": "no model at 90 s"}))
    summary = gpu_check.run_check(tmp_path / "out", write_corpus(tmp_path / "data"), True, time.monotonic())
    steps = summary["steps"]
    assert (steps["train"]["status"], steps["train"]["returncode"]) == ("failed", 2)
    assert steps["train"]["detail"] == "error: no such recipe"
    assert (steps["eval-early"]["status"], steps["eval-early"]["detail"]) == ("skipped", "no model at 90 s")
    assert [steps[name]["status"] for name in gpu_check.STEPS[2:]] == ["ok"] * 4
    assert all(target["met"] is None for target in summary["targets"])  # nothing measured: none judged


def running(pid: int) -> bool:
    """Whether a process runs: neither gone nor a zombie (killed, not yet reaped by whoever adopted it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_step_past_its_slot_is_killed_with_its_children_and_later_steps_keep_their_time(tmp_path, monkeypatch):
    pid_file = tmp_path / "child.pid"
    hanging = [
        sys.executable,
        "-c",
        "import subprocess, sys, time; sleeper = [sys.executable, '-c', 'import time; time.sleep(120)'];"
        f"open({str(pid_file)!r}, 'w').write(str(subprocess.Popen(sleeper).pid)); time.sleep(120)",
    ]
    slots = tuple((name, 3 if name == "train" else 30, 1) for name in gpu_check.STEPS)
    monkeypatch.setattr(gpu_check, "DRY", dataclasses.replace(gpu_check.DRY, slots=slots))
    monkeypatch.setattr(gpu_check, "step_commands", fake_steps({"train": hanging}))
    start = time.monotonic()
    summary = gpu_check.run_check(tmp_path / "out", write_corpus(tmp_path / "data"), True, start)
    assert time.monotonic() - start < 30
    train = summary["steps"]["train"]
    assert (train["status"], train["timeout_seconds"]) == ("timed out", 3)
    assert not running(int(pid_file.read_text()))  # the step's own child went with it
    assert [summary["steps"][name]["status"] for name in gpu_check.STEPS[1:]] == ["ok"] * 5


def test_a_recipe_that_ends_within_the_early_seconds_is_judged_by_its_final_model(tmp_path):
    # No model kept at 90 s, because training ended at 64 s: the recipe's own output is the 90 s model.
    out, plan = tmp_path / "out", gpu_check.GPU
    run = out / "multi30k"
    run.mkdir(parents=True)
    (run / "all_results.json").write_text(json.dumps({"train_runtime": 64.0, "train_tokens_per_second": 1e5}))
    (run / "trainer_state.json").write_text(json.dumps({"global_step": 1380, "max_steps": 1380, "epoch": 12.0}))
    final = {"bleu": 40.5, "model": str(run / "averaged-last-3"), "sentences_per_second": 900.0}
    (out / "eval_final.json").write_text(json.dumps(final))

    measurements = gpu_check.measure(out, plan)
    assert (measurements["bleu_early"], measurements["early_seconds"], measurements["early_step"]) == (40.5, 64.0, 1380)
    assert gpu_check.TARGETS[0].evaluate(measurements)["met"] is True
    assert "finished within 90 s" in gpu_check.step_commands(out, tmp_path, plan, ctranslate2=False)["eval-early"]()

    # Its last step ended before 90 s (else the model at 90 s would be kept), its last evaluation and save after it.
    (run / "all_results.json").write_text(json.dumps({"train_runtime": 93.5, "train_tokens_per_second": 1e5}))
    measurements = gpu_check.measure(out, plan)
    assert (measurements["bleu_early"], measurements["early_seconds"], measurements["early_step"]) == (40.5, 90, 1380)
    assert gpu_check.TARGETS[0].evaluate(measurements)["met"] is True

    # A run that stopped short of its steps did not produce the recipe's model: no stand-in for the 90 s one.
    state = {"global_step": 900, "max_steps": 1380, "epoch": 7.8}
    (run / "trainer_state.json").write_text(json.dumps(state))
    measurements = gpu_check.measure(out, plan)
    assert (measurements["bleu_early"], measurements["early_seconds"]) == (None, 90)


def test_the_cuda_12_cublas_of_pips_nvidia_wheel_is_found_in_the_nvidia_package_folders(tmp_path):
    """The ctranslate2 wheel loads libcublas.so.12 by name; beside a torch built for CUDA 13 it is pip's
    nvidia-cublas-cu12, which the bench steps then find on LD_LIBRARY_PATH."""
    site, other = tmp_path / "site-packages" / "nvidia", tmp_path / "user" / "nvidia"
    cublas = site / "cublas" / "lib"
    cublas.mkdir(parents=True)
    (cublas / "libcublas.so.12").touch()
    (site / "cu13" / "lib").mkdir(parents=True)
    (site / "cu13" / "lib" / "libcublas.so.13").touch()
    other.mkdir(parents=True)
    assert gpu_check.cuda12_cublas_folders([str(other), str(site), str(site)]) == [str(cublas)]
    assert gpu_check.cuda12_cublas_folders([str(other)]) == []
    assert gpu_check.cuda12_cublas_folders([]) == []
