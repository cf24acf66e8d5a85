"""bench/ab_speed.py end to end at the tiny shape (bench_speed.py runs inside the GPU check's dry run), and the parts
of bench_speed.py that keep one engine's failure from costing the other engines' rows."""

import contextlib
import copy
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from harness import ROOT, environment, run_cli
from transformers.generation import LogitsProcessorList, StoppingCriteriaList

sys.path.insert(0, str(ROOT / "bench"))

import bench_speed  # noqa: E402
import profile_speed  # noqa: E402


def run_ab(what: str, rounds: int, *flags: str) -> str:
    """bench/ab_speed.py at the tiny shape: its output, once it has exited cleanly."""
    result = run_cli("bench/ab_speed.py", what, "--shape", "tiny", "--rounds", str(rounds), *flags)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_training_ab_times_ours_with_and_without_the_mask_and_marian_and_prints_their_ratios():
    stdout = run_ab("train", 4)
    rates = dict(re.findall(r"^  (ours, every position|ours, labelled only|marian): ([\d,]+)$", stdout, re.M))
    assert set(rates) == {"ours, every position", "ours, labelled only", "marian"}
    assert all(int(rate.replace(",", "")) > 0 for rate in rates.values())
    ratios = re.findall(r"^  (.+ / .+): (\d+\.\d+)x \((\d+\.\d+)-(\d+\.\d+)x\)$", stdout, re.M)
    assert [name for name, *_ in ratios] == [
        "labelled only / every position",
        "labelled only / marian",
        "every position / marian",
    ]
    for _, median, low, high in ratios:
        assert float(low) <= float(median) <= float(high)


def test_the_ctranslate2_ab_times_both_conversions_at_both_precisions_and_beam_widths():
    stdout = run_ab("ctranslate2", 2)
    rows = re.findall(
        r"^beam (\d), (float32|int8): ours [\d.]+ ms, marian [\d.]+ ms; marian's time / ours: ", stdout, re.M
    )
    assert sorted(rows) == sorted((beams, quantization) for beams in "14" for quantization in ("float32", "int8"))


def test_the_masks_ab_times_compiled_beam_search_with_the_decoders_mask_and_with_generates():
    stdout = run_ab("masks", 2, "--backend", "eager")  # dynamo's graphs without inductor's code generation
    times = dict(re.findall(r"^  (decoder builds the mask|generate\(\) builds it): ([\d.]+)$", stdout, re.M))
    assert set(times) == {"decoder builds the mask", "generate() builds it"}
    assert all(float(value) > 0 for value in times.values())
    assert re.search(r"^  generate\(\) builds it / decoder builds the mask: \d+\.\d+x \(", stdout, re.M)


def tiny_source(shape: bench_speed.Shape) -> dict:
    generator = torch.Generator().manual_seed(0)
    input_ids, attention_mask = bench_speed.random_batch(shape.gen_batch, shape.gen_len, shape.vocab_size, generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def test_sequence_agreement_is_the_share_of_rows_equal_to_their_end():
    pad, eos = bench_speed.PAD, bench_speed.EOS
    expected = torch.tensor([[1, 5, 6, eos], [1, 7, eos, pad], [1, 8, 9, 10]])
    assert bench_speed.sequence_agreement(expected, expected.clone()) == 1.0
    one_flipped = expected.clone()
    one_flipped[2, 3] = 11
    assert bench_speed.sequence_agreement(expected, one_flipped) == 2 / 3
    # Another length (a batch whose sequences all ended sooner): compared as if padded.
    assert bench_speed.sequence_agreement(expected[:2, :3], expected[:2]) == 0.5
    assert bench_speed.sequence_agreement(expected[1:2, :3], expected[1:2]) == 1.0


def test_the_compiled_decoding_check_times_only_a_decoder_that_emits_the_dynamic_caches_tokens():
    shape = bench_speed.SHAPES["tiny"]
    torch.manual_seed(0)
    model = bench_speed.build_ours(shape).eval()
    source = tiny_source(shape)
    agreement, note, timed = bench_speed.compiled_decoding_check(model, copy.deepcopy(model), source, shape.new_tokens)
    assert agreement == {"greedy": 1.0, "beam 4": 1.0} and timed
    assert note.startswith("compiled static-cache decoding, float32: 100.0% of the sequences") and "not" not in note

    wrong = copy.deepcopy(model)  # a decoder that gets its keys and values wrong: every output differs
    with torch.no_grad():
        for layer in wrong.model.decoder.layers:
            layer.self_attn.qkv_proj.weight.mul_(-3.0)
    agreement, note, timed = bench_speed.compiled_decoding_check(model, wrong, source, shape.new_tokens)
    assert min(agreement.values()) < bench_speed.MIN_TOKEN_AGREEMENT and not timed
    assert note.endswith("below 90%: wrong, not rounded differently, so not timed")

    def broken(*args, **kwargs):
        raise RuntimeError("inductor: backend compiler failed\nTraceback ...")

    failing = copy.deepcopy(model)
    failing.forward = broken
    agreement, note, timed = bench_speed.compiled_decoding_check(model, failing, source, shape.new_tokens)
    assert agreement is None and not timed
    assert note == "no ours, compiled static rows (inductor: backend compiler failed)"


def test_compiled_decoding_falls_back_to_the_next_mode_where_one_fails(monkeypatch):
    """On a GPU eval.py --compile's mode (reduce-overhead: CUDA graphs) is timed, or where its decoding fails,
    default's; where every mode fails there is no compiled row, and the notes say why."""
    shape = bench_speed.SHAPES["tiny"]
    torch.manual_seed(0)
    model = bench_speed.build_ours(shape).eval()
    source = tiny_source(shape)
    compiled_modes = []

    def compile_failing_in(failing: set):
        def compile(forward, backend, mode=None):
            compiled_modes.append(mode)
            if mode not in failing:
                return forward

            def graphs_fail(*args, **kwargs):
                raise RuntimeError(f"{mode}: CUDA graphs cannot record this step\nTraceback ...")

            return graphs_fail

        return compile

    modes = ["reduce-overhead", "default"]
    autocast = bench_speed.autocast_context(torch.device("cpu"), False)
    monkeypatch.setattr(torch, "compile", compile_failing_in({"reduce-overhead"}))
    static, mode, agreement, notes = bench_speed.compiled_static_decoder(
        model, source, shape.new_tokens, autocast, "inductor", modes
    )
    assert compiled_modes == modes and mode == "default" and static is not None
    assert agreement == {"greedy": 1.0, "beam 4": 1.0}
    assert notes[0] == (
        "mode reduce-overhead: no ours, compiled static rows (reduce-overhead: CUDA graphs cannot record this step)"
    )
    assert notes[1].startswith("mode default: compiled static-cache decoding, float32: 100.0% of the sequences")

    compiled_modes.clear()
    monkeypatch.setattr(torch, "compile", compile_failing_in(set(modes)))
    static, mode, agreement, notes = bench_speed.compiled_static_decoder(
        model, source, shape.new_tokens, autocast, "inductor", modes
    )
    assert compiled_modes == modes and (static, mode, agreement) == (None, None, None)
    assert notes == [
        f"mode {mode}: no ours, compiled static rows ({mode}: CUDA graphs cannot record this step)" for mode in modes
    ]


def test_compiled_decoding_is_checked_in_float32_and_timed_with_the_weights_in_the_given_dtype():
    """On a GPU the compiled row decodes as eval.py --compile --dtype bfloat16 does: its check against the dynamic cache
    in float32 first, then the weights in bf16 and no autocast around the timed calls."""
    shape = bench_speed.SHAPES["tiny"]
    torch.manual_seed(0)
    model = bench_speed.build_ours(shape).eval()
    source = tiny_source(shape)
    autocast_calls = []

    def autocast():
        autocast_calls.append(1)
        return contextlib.nullcontext()

    static, mode, agreement, _ = bench_speed.compiled_static_decoder(
        model, source, shape.new_tokens, autocast, "eager", [None], torch.bfloat16
    )
    assert static is not None and mode is None and agreement == {"greedy": 1.0, "beam 4": 1.0}
    assert static.dtype == torch.bfloat16 and model.dtype == torch.float32 and autocast_calls == []
    static, _, _, _ = bench_speed.compiled_static_decoder(model, source, shape.new_tokens, autocast, "eager", [None])
    assert static.dtype == torch.float32 and autocast_calls == [1]


def test_an_engine_that_raises_loses_only_its_own_row_and_is_named_with_its_error():
    calls = []

    def runs():
        calls.append("runs")

    def cannot_load():
        raise RuntimeError("Library libcublas.so.12 is not found or cannot be loaded")

    notes = []
    fns = {"ours": runs, "ours, CT2 bfloat16": cannot_load, "marian": runs}
    kept = bench_speed.working(fns, "beam-4 sent/s", notes)
    assert list(kept) == ["ours", "marian"] and calls == ["runs", "runs"]
    assert notes == ["beam-4 sent/s: no ours, CT2 bfloat16 (Library libcublas.so.12 is not found or cannot be loaded)"]


def test_a_ctranslate2_model_that_does_not_load_is_named_and_the_others_kept(tmp_path, monkeypatch):
    shape = bench_speed.SHAPES["tiny"]
    torch.manual_seed(0)
    models = {"ours": bench_speed.build_ours(shape).eval(), "marian": bench_speed.build_marian(shape).eval()}
    build = bench_speed.translator

    def translator(path, device, compute_type, threads):
        if "marian" in str(path) and compute_type == "int8":
            raise ValueError("Requested int8 compute type, but the target device or backend do not support it")
        return build(path, device, compute_type, threads)

    monkeypatch.setattr(bench_speed, "translator", translator)
    cpu = torch.device("cpu")
    translators, notes = bench_speed.ctranslate2_models(models, shape, str(tmp_path), cpu, ("float32", "int8"))
    assert list(translators) == ["ours, CT2 float32", "marian, CT2 float32", "ours, CT2 int8"]
    assert notes == [
        "no marian, CT2 int8 rows (Requested int8 compute type, but the target device or backend do not support it)"
    ]
    source = tiny_source(shape)
    tokens = bench_speed.bench_tokens(shape.vocab_size)
    for kept in translators.values():  # the kept ones decode
        bench_speed.ctranslate2_call(kept, tokens, source, 4, shape.new_tokens)()


SITECUSTOMIZE = """
import vanilla_ctranslate2

build = vanilla_ctranslate2.translator


class NoCublas:
    def __init__(self, translator):
        self.num_translators = translator.num_translators

    def translate_batch(self, *args, **kwargs):
        raise RuntimeError("Library libcublas.so.12 is not found or cannot be loaded")


def translator(path, device, compute_type, threads):
    made = build(path, device, compute_type, threads)
    return NoCublas(made) if "marian-int8" in str(path) else made


vanilla_ctranslate2.translator = translator
"""


def bench_decoding(tmp_path: Path) -> dict:
    """bench_speed.py's decoding rows at the tiny shape (its --json record), with tmp_path/shim first on the path."""
    rows = tmp_path / "rows.json"
    command = [sys.executable, str(ROOT / "bench" / "bench_speed.py"), "--shape", "tiny", "--threads", "1"]
    command += ["--repeats", "1", "--warmup", "1", "--skip-training", "--no-bf16", "--json", str(rows)]
    env = environment(PYTHONPATH=f"{tmp_path / 'shim'}{os.pathsep}{ROOT}")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(rows.read_text())


def test_bench_speed_leaves_out_an_engine_that_fails_at_its_first_batch_and_times_the_others(tmp_path):
    """bench_speed.py end to end, decoding, with Marian's int8 CTranslate2 model failing as a wheel without its CUDA
    libraries does: both rows are timed without it, and the notes say which engine is missing from which row."""
    (tmp_path / "shim").mkdir()
    (tmp_path / "shim" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    record = bench_decoding(tmp_path)
    assert list(record["rows"]) == ["beam-4 sent/s", "greedy sent/s"]
    for values in record["rows"].values():
        assert set(values) == {"ours", "marian", "ours, CT2 float32", "marian, CT2 float32", "ours, CT2 int8"}
        assert all(value > 0 for value in values.values())
    error = "(Library libcublas.so.12 is not found or cannot be loaded)"
    assert record["notes"] == [f"{row}: no marian, CT2 int8 {error}" for row in ("beam-4 sent/s", "greedy sent/s")]


def test_bench_speed_without_an_importable_ctranslate2_times_the_other_engines_and_says_why(tmp_path):
    """A ctranslate2 wheel that cannot load (a library it was built against is missing) costs its rows only."""
    (tmp_path / "shim" / "ctranslate2").mkdir(parents=True)
    (tmp_path / "shim" / "ctranslate2" / "__init__.py").write_text("raise ImportError('libctranslate2.so: missing')\n")
    record = bench_decoding(tmp_path)
    assert {metric: set(values) for metric, values in record["rows"].items()} == {
        "beam-4 sent/s": {"ours", "marian"},
        "greedy sent/s": {"ours", "marian"},
    }
    assert record["notes"] == ["no CTranslate2 rows: importing ctranslate2 failed (libctranslate2.so: missing)"]


@pytest.mark.parametrize("has_kernels", [False, True])
def test_bench_speed_times_bf16_training_on_a_cpu_only_where_it_has_bf16_kernels(tmp_path, has_kernels):
    """As train.py --bf16 trains in float32 on a CPU without bf16 kernels, the bench leaves out its bf16 rows there
    (each step would take ~30x a float32 one) and says so in its notes; with them, both models get a bf16 row."""
    (tmp_path / "shim").mkdir()
    (tmp_path / "shim" / "sitecustomize.py").write_text(
        f"import vanilla_cli\nvanilla_cli.cpu_has_bf16_kernels = lambda: {has_kernels}\n"
    )
    rows = tmp_path / "rows.json"
    command = [sys.executable, str(ROOT / "bench" / "bench_speed.py"), "--shape", "tiny", "--threads", "1"]
    command += ["--repeats", "1", "--warmup", "1", "--skip-generation", "--json", str(rows)]
    env = environment(PYTHONPATH=f"{tmp_path / 'shim'}{os.pathsep}{ROOT}")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(rows.read_text())
    bf16_rows = {"ours, bf16 autocast", "marian, bf16 autocast"}
    assert set(record["rows"]["train tokens/s"]) == {"ours", "marian"} | (bf16_rows if has_kernels else set())
    note = (
        "no bf16 rows: this CPU has no bf16 matrix kernels (oneDNN's need AVX-512 or AMX); "
        "train.py --bf16 trains in float32 here"
    )
    assert record["notes"] == ([] if has_kernels else [note])
    assert (f"note: {note}" in result.stdout) is not has_kernels


def test_the_profile_prints_a_summary_line_and_an_operator_table_for_each_call():
    """Every call `make gpu-profile` profiles, the compiled ones too (with dynamo's graphs run eagerly on a CPU)."""
    flags = ["--shape", "tiny", "--steps", "1", "--new-shapes", "2", "--compile", "--compile-backend", "eager"]
    result = run_cli("bench/profile_speed.py", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    costs = re.findall(r"^(True|False) +([\d.]+) +([\d.]+) +(-?[\d.]+)$", result.stdout, re.M)
    assert [row[0] for row in costs] == ["True", "False"] and all(float(row[1]) > 0 for row in costs)
    summaries = re.findall(r"=== (.+) \(1 calls\): ([\d.]+) ms a call \(wall\) ===", result.stdout)
    assert [title for title, _ in summaries] == [
        "training step",
        "training step, compiled",
        "beam-4 generation",
        "beam-4 generation, compiled static, bf16 (eager)",
    ]
    assert all(float(ms) > 0 for _, ms in summaries)
    assert result.stdout.count("Self CPU time total") == 4 and "aten::addmm" in result.stdout
    parts = re.findall(r"^(forward|_reorder_cache|logits processors) +1\.0 +([\d.]+)$", result.stdout, re.M)
    assert sorted(name for name, _ in parts) == sorted(["forward", "_reorder_cache", "logits processors"] * 2)
    assert all(float(us) > 0 for _, us in parts), result.stdout[-3000:]


def test_the_parts_of_a_decoding_step_are_marked_inside_the_block_and_restored_after_it():
    shape = bench_speed.SHAPES["tiny"]
    model = bench_speed.build_ours(shape).eval()
    _, source = bench_speed.bench_inputs(shape, torch.device("cpu"))
    owners = [type(model), LogitsProcessorList, StoppingCriteriaList]
    before = [dict(vars(owner)) for owner in owners]
    decoding = bench_speed.generation_call(model, source, 4, shape.new_tokens, contextlib.nullcontext)
    with profile_speed.step_parts(model), torch.profiler.profile() as prof:
        decoding()
    counts = {event.key: event.count for event in prof.key_averages() if event.key.startswith("part: ")}
    steps = shape.new_tokens
    assert counts["part: forward"] == counts["part: _reorder_cache"] == steps
    assert counts["part: logits processors"] == counts["part: _get_top_k_continuations"] == steps
    assert [dict(vars(owner)) for owner in owners] == before and "forward" not in vars(model)


def test_the_gpu_busy_time_sums_the_device_events_per_call():
    """Kernels and copies count, the host's operators do not; per call."""
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = [
        types.SimpleNamespace(device_type=cuda, self_device_time_total=3000.0, count=6),  # microseconds
        types.SimpleNamespace(device_type=cuda, self_device_time_total=1000.0, count=2),
        types.SimpleNamespace(device_type=cpu, self_device_time_total=9000.0, count=50),
    ]
    assert profile_speed.kernel_summary(events, calls=2) == (0.002, 4)
