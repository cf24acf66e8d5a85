"""vanilla_batching and train.py --max_tokens: token budgets, padding, epochs, ranks, resume, tokens/s, bf16 on CPU."""

import json
import math
import random
import shutil
import time

import datasets
import pytest
import torch
import transformers
from harness import run_cli
from num2words import num2words
from packaging.version import Version
from test_train import QUICK, TINY, environment, run_train, torchrun, write_jsonl
from transformers import DataCollatorForSeq2Seq
from transformers.utils import is_torch_bf16_gpu_available

import vanilla_cli
import vanilla_train_arguments
from vanilla_batching import TokenBudgetBatchSampler, sequence_lengths
from vanilla_cli import UsageError
from vanilla_tokenizer import train_bpe_tokenizer
from vanilla_train_arguments import parse_arguments, training_attention

LANGS = ["--source_lang", "en", "--target_lang", "de"]


@pytest.fixture(scope="module")
def corpus() -> tuple[list[dict], DataCollatorForSeq2Seq]:
    """10,000 pairs with lengths spread like Multi30k's (source about 15 +- 5 tokens, the target close to it)."""
    tokenizer = train_bpe_tokenizer([num2words(n) for n in range(1, 100)], vocab_size=60)
    generate = random.Random(0)
    rows = []
    for _ in range(10000):
        source = max(2, round(generate.gauss(15, 5)))
        target = max(2, round(source * generate.gauss(1, 0.15)))
        rows.append({"input_ids": [5] * (source - 1) + [2], "labels": [6] * (target - 1) + [2]})
    return rows, DataCollatorForSeq2Seq(tokenizer)


def sampler_of(rows: list[dict], max_tokens: int, **options) -> TokenBudgetBatchSampler:
    sources, targets = ([len(row[side]) for row in rows] for side in ("input_ids", "labels"))
    return TokenBudgetBatchSampler(sources, targets, max_tokens, **options)


@pytest.mark.parametrize("multiple", [None, 8])
def test_batches_hold_at_most_max_tokens_as_collated_and_padding_is_under_5_percent(corpus, multiple):
    rows, collator = corpus
    collator.pad_to_multiple_of = multiple
    sampler = sampler_of(rows, 4000, pad_to_multiple_of=multiple)
    batches = list(sampler)
    assert sorted(index for batch in batches for index in batch) == list(range(len(rows)))  # each pair once
    real = padded = 0
    for batch in batches:  # the reference: the tensors the collator builds
        collated = collator([rows[index] for index in batch])
        tokens = collated["input_ids"].numel() + collated["labels"].numel()
        assert tokens <= 4000
        padded += tokens
        real += int(collated["attention_mask"].sum() + collated["labels"].ne(-100).sum())
    assert padded > 0.9 * 4000 * len(batches)  # packed full, not cut short
    if multiple is None:
        assert 1 - real / padded <= 0.05


def batches_pair_by_pair(sources, targets, max_tokens, seed, epoch, multiple) -> list[list[int]]:
    """The sampler's epoch written out pair by pair: shuffle, sort stably by the longer side, then the source side in
    alternating directions, then the target side; fill each batch while it holds; shuffle the batches."""

    def key(index):
        longer = max(sources[index], targets[index])
        return longer, sources[index] if longer % 2 else -sources[index], targets[index]

    def padded(length):
        return length if multiple is None else math.ceil(length / multiple) * multiple

    generator = torch.Generator().manual_seed(seed + epoch)
    batches, batch, longest = [], [], (0, 0)
    for index in sorted(torch.randperm(len(sources), generator=generator).tolist(), key=key):
        wider = (max(longest[0], sources[index]), max(longest[1], targets[index]))
        if (len(batch) + 1) * (padded(wider[0]) + padded(wider[1])) > max_tokens:
            batches.append(batch)
            batch, wider = [], (sources[index], targets[index])
        batch, longest = batch + [index], wider
    batches.append(batch)
    return [batches[index] for index in torch.randperm(len(batches), generator=generator).tolist()]


@pytest.mark.parametrize("multiple", [None, 8])
def test_batches_are_the_pair_by_pair_definitions(corpus, multiple):
    rows, _ = corpus
    sources, targets = ([len(row[side]) for row in rows] for side in ("input_ids", "labels"))
    sampler = sampler_of(rows, 1000, seed=4, pad_to_multiple_of=multiple)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        assert list(sampler) == batches_pair_by_pair(sources, targets, 1000, 4, epoch, multiple)


def test_each_epoch_draws_new_batches_from_the_seed_and_the_same_number(corpus):
    rows, _ = corpus
    sampler = sampler_of(rows, 4000, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert len(first) == len(second) == len(sampler)
    assert first != second and sorted(map(sorted, first)) != sorted(map(sorted, second))  # order and contents
    again = sampler_of(rows, 4000, seed=3)
    again.set_epoch(1)
    assert list(again) == second


@pytest.mark.parametrize("replicas", [2, 3])
def test_ranks_take_distinct_batches_and_equally_many(corpus, replicas):
    rows, _ = corpus
    whole = list(sampler_of(rows, 1000, seed=5))
    per_rank = [list(sampler_of(rows, 1000, seed=5, num_replicas=replicas, rank=rank)) for rank in range(replicas)]
    assert len({len(batches) for batches in per_rank}) == 1
    assert len(per_rank[0]) == len(whole) // replicas
    taken = [index for batches in per_rank for batch in batches for index in batch]
    assert len(taken) == len(set(taken))  # no pair on two ranks
    assert {tuple(batch) for batches in per_rank for batch in batches} <= {tuple(batch) for batch in whole}


def test_sequence_lengths_follow_the_datasets_row_order_after_shuffle_and_select(corpus):
    rows, _ = corpus
    dataset = datasets.Dataset.from_list(rows).shuffle(seed=0).select(range(0, len(rows), 3))  # an indices mapping
    for column in ("input_ids", "labels"):
        assert sequence_lengths(dataset, column).tolist() == [len(ids) for ids in dataset[column]]
    assert sequence_lengths({"labels": [[4, 2], [2]]}, "labels").tolist() == [2, 1]  # a dataset without an Arrow table


def test_a_pair_longer_than_the_budget_is_a_usage_error():
    with pytest.raises(UsageError, match="--max_tokens 10 cannot hold the longest pair .12 padded"):
        TokenBudgetBatchSampler([3, 7], [2, 5], 10)


def test_fewer_batches_than_processes_is_a_usage_error():
    assert len(TokenBudgetBatchSampler([3] * 4, [2] * 4, 10, num_replicas=2)) == 1
    with pytest.raises(UsageError, match="packs the training data into 1 batch.es., fewer than the 2 processes"):
        TokenBudgetBatchSampler([3] * 4, [2] * 4, 20, num_replicas=2)


# The batching of a run, and how many pairs put its checkpoint-6 in the middle of a later epoch (one process, two).
BATCHINGS = {"max-tokens": (["--max_tokens", "120"], 60, 120), "group-by-length": ([], 20, 40)}


@pytest.mark.slow
@pytest.mark.parametrize("batching", BATCHINGS)
def test_cli_resumed_mid_epoch_saves_the_uninterrupted_runs_model(tmp_path, batching):
    """Trainer skips the resumed epoch's trained batches: each epoch's order must be the one the run drew."""
    flags, pairs, _ = BATCHINGS[batching]
    train_file = write_jsonl(tmp_path / "train.jsonl", range(1, pairs + 1))
    common = [*TINY, *QUICK, "--train_file", str(train_file), *LANGS, *flags, "--max_steps", "11"]
    common += ["--save_strategy", "steps", "--save_steps", "3", "--logging_steps", "2"]
    whole = run_train(*common, "--output_dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert ("max_tokens=120" if flags else "train_sampling_strategy=group_by_length") in whole.stdout
    steps_per_epoch = round(11 / json.loads((tmp_path / "whole" / "trainer_state.json").read_text())["epoch"])
    assert 6 > steps_per_epoch and 6 % steps_per_epoch != 0  # checkpoint-6 is in the middle of a later epoch
    killed_dir = tmp_path / "killed"
    env = dict(environment(), VANILLA_FAULT="checkpoint-9")  # killed while saving checkpoint-9: resume from 6
    killed = run_cli("train.py", *common, "--output_dir", str(killed_dir), env=env)
    assert killed.returncode < 0, killed.stderr[-3000:]
    resumed = run_train(*common, "--output_dir", str(killed_dir), "--resume_from_checkpoint", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("checkpoint-9/model.safetensors", "model.safetensors"):
        assert (killed_dir / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


@pytest.mark.multiprocess
@pytest.mark.skipif(
    Version(transformers.__version__) < Version("5.24"),
    reason="transformers < 5.24 cannot resume a DDP run on CPUs: rank 1 fails to load its checkpoint's tensors "
    "(torch: don't know how to restore data location tagged with cpu:0)",
)
@pytest.mark.parametrize("batching", BATCHINGS)
def test_torchrun_resumed_in_a_later_epoch_draws_that_epochs_batches(tmp_path, batching):
    # Under DDP the sampler sits in accelerate's BatchSamplerShard, which does not pass set_epoch on to it when the
    # resumed epoch's trained batches are skipped: epoch 1 would replay epoch 0's order.
    flags, _, pairs = BATCHINGS[batching]
    train_file = write_jsonl(tmp_path / "train.jsonl", range(1, pairs + 1))
    common = [*TINY, *QUICK, "--train_file", str(train_file), *LANGS, *flags, "--max_steps", "11"]
    common += ["--save_strategy", "steps", "--save_steps", "3", "--save_total_limit", "4"]
    whole = run_train(*common, "--output_dir", str(tmp_path / "whole"), launcher=torchrun())
    assert whole.returncode == 0, whole.stderr[-3000:]
    steps_per_epoch = round(11 / json.loads((tmp_path / "whole" / "trainer_state.json").read_text())["epoch"])
    assert steps_per_epoch < 6 < 2 * steps_per_epoch  # checkpoint-6 is in the middle of the second epoch
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "whole" / "checkpoint-6", resumed_dir / "checkpoint-6")
    resume = ["--output_dir", str(resumed_dir), "--resume_from_checkpoint", str(resumed_dir / "checkpoint-6")]
    resumed = run_train(*common, *resume, launcher=torchrun())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("checkpoint-9/model.safetensors", "model.safetensors"):
        assert (resumed_dir / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


@pytest.mark.multiprocess
def test_torchrun_reports_the_padding_of_every_processs_batches(tmp_path):
    """Two processes train an epoch's token-budget batches between them: the padding reported is that of all of
    them, as one process training them all reports it."""
    train_file = write_jsonl(tmp_path / "train.jsonl", range(1, 61))  # 4 batches
    args = [*TINY, *QUICK, "--train_file", str(train_file), *LANGS, "--max_tokens", "120", "--num_train_epochs", "1"]
    two = run_train(*args, "--output_dir", str(tmp_path / "two"), launcher=torchrun())
    one = run_train(*args, "--output_dir", str(tmp_path / "one"))
    assert two.returncode == 0 and one.returncode == 0, (two.stderr + one.stderr)[-3000:]
    steps = [json.loads((tmp_path / name / "trainer_state.json").read_text())["global_step"] for name in ("two", "one")]
    assert 2 * steps[0] == steps[1]  # the processes share out every batch: none is left out
    reported = [json.loads((tmp_path / name / "all_results.json").read_text()) for name in ("two", "one")]
    assert reported[0]["train_padding_fraction"] == pytest.approx(reported[1]["train_padding_fraction"], rel=1e-9)
    padding = [line for line in two.stdout.splitlines() if line.startswith("padding: ")]
    assert padding == [line for line in one.stdout.splitlines() if line.startswith("padding: ")] and len(padding) == 1


@pytest.mark.slow
def test_cli_reports_real_and_padded_tokens_per_second_in_the_log_and_results(tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", range(1, 41))
    output_dir = tmp_path / "model"
    args = [*TINY, *QUICK, "--train_file", str(train_file), *LANGS, "--max_tokens", "120", "--logging_steps", "2"]
    result = run_train(*args, "--num_train_epochs", "1", "--output_dir", str(output_dir), "--bf16", "true")
    assert result.returncode == 0, result.stderr[-3000:]  # --bf16 without --use_cpu on a machine without a GPU
    results = json.loads((output_dir / "all_results.json").read_text())
    real, padded = results["train_tokens_per_second"], results["train_padded_tokens_per_second"]
    # The reference: the padding of the epoch's batches, computed from the sampler's batches and the lengths.
    assert real / padded == pytest.approx(1 - results["train_padding_fraction"], rel=1e-6)
    assert real * results["train_runtime"] > 40 * 2 * 2  # at least a word and </s> on each side of each pair
    logged = [json.loads(line.replace("'", '"')) for line in result.stdout.splitlines() if "'loss'" in line]
    assert logged and all(float(entry["tokens_per_second"]) > 0 for entry in logged)
    assert all(float(entry["padded_tokens_per_second"]) >= float(entry["tokens_per_second"]) for entry in logged)
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert "tokens_per_second" in state["log_history"][0]


@pytest.mark.slow
def test_logged_tokens_per_second_leaves_out_the_evaluations_between_logs(tmp_path):
    output_dir = tmp_path / "model"
    args = [*TINY, *QUICK, "--max_tokens", "300", "--max_steps", "6", "--logging_steps", "2", "--output_dir"]
    args += [str(output_dir), "--eval_strategy", "steps", "--eval_steps", "2", "--predict_with_generate"]
    result = run_train(*args, "--generation_max_length", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    evaluated = sum(entry["eval_runtime"] for entry in history if "eval_runtime" in entry)
    runtime = next(entry["train_runtime"] for entry in history if "train_runtime" in entry)
    assert evaluated > runtime / 2  # the evaluations (beam search over the validation split) take most of the run
    # The reference: the run's rate over its runtime, evaluations included; training alone runs more than twice as fast.
    summary = next(entry["train_tokens_per_second"] for entry in history if "train_runtime" in entry)
    after_evaluations = [entry["tokens_per_second"] for entry in history if "loss" in entry][1:]
    # Counted with the evaluations the windows would read about the summary's rate; a margin for a window slowed by
    # other processes on the cores.
    assert after_evaluations and sorted(after_evaluations)[len(after_evaluations) // 2] > 1.5 * summary


def test_bf16_trains_on_the_cpu_where_no_gpu_has_it():
    _, _, args = parse_arguments(["--output_dir", "unused", "--bf16", "true"])
    assert args.use_cpu == (not is_torch_bf16_gpu_available())
    _, _, plain = parse_arguments(["--output_dir", "unused"])
    assert not plain.use_cpu


def test_bf16_on_a_gpu_without_bf16_is_refused_rather_than_trained_on_the_cpu(monkeypatch):
    """A GPU that has no bf16 (transformers' check) is not a reason to train on the CPU: --bf16 names the problem."""
    monkeypatch.setattr(vanilla_train_arguments, "is_torch_bf16_gpu_available", lambda: False)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device("cuda"))
    with pytest.raises(UsageError, match=r"--bf16: this cuda device has no bf16 support.*--use_cpu true"):
        parse_arguments(["--output_dir", "unused", "--bf16", "true"])
    monkeypatch.setattr(vanilla_train_arguments, "cpu_bf16_problem", lambda: None)
    _, _, args = parse_arguments(["--output_dir", "unused", "--bf16", "true", "--use_cpu", "true"])
    assert args.bf16 and args.use_cpu


def test_bf16_on_a_cpu_where_it_is_slower_trains_in_float32_and_says_so(monkeypatch, capsys):
    """bf16 autocast on a CPU whose oneDNN has no bf16 kernels (no AVX-512, no AMX) runs many times slower than
    float32, and on one whose bf16 kernels run slower than its float32 ones (an Intel Xeon without AMX), ~1.5x slower
    (BENCHMARKS.md): train.py trains in float32 there, with a warning naming --bf16 and the measured speed."""
    flags = ["--output_dir", "unused", "--bf16", "true", "--use_cpu", "true"]
    for speed, kept in ((0.0, False), (0.5, False), (0.95, False), (1.05, True), (1.6, True)):
        monkeypatch.setattr(vanilla_cli, "cpu_bf16_speed", lambda value=speed: value)
        _, _, args = parse_arguments(flags)
        warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
        assert args.bf16 == kept and args.use_cpu
        if kept:
            assert warnings == []
        else:
            assert len(warnings) == 1 and "--bf16" in warnings[0] and "training in float32" in warnings[0]
            assert ("no bf16 matrix kernels" if speed == 0 else f"run at {speed:.2f}x the speed") in warnings[0]


def test_the_cpu_bf16_speed_is_a_measured_ratio_of_matrix_products():
    """cpu_bf16_speed times the same product in both precisions: on a CPU with bf16 kernels a positive ratio, without
    them 0."""
    vanilla_cli.cpu_bf16_speed.cache_clear()
    speed = vanilla_cli.cpu_bf16_speed()
    if vanilla_cli.cpu_has_bf16_kernels():
        assert 0.1 < speed < 10
    else:
        assert speed == 0.0


def test_the_cpu_bf16_speed_compares_both_precisions_under_the_same_load(monkeypatch):
    """Other processes slow the cores for stretches longer than a product: a load that lifts halfway through the
    measurement must not decide the precision. Products timed on a fake clock, bf16 taking twice float32's time and
    the first 12 products four times as long: the ratio is the kernels' 0.5, timed on one thread, whose count is put
    back."""
    clock, threads = [0.0], []

    def linear(a, w):
        threads.append(torch.get_num_threads())
        load = 4.0 if len(threads) <= 12 else 1.0
        clock[0] += (1.0 if a.dtype == torch.float32 else 2.0) * load * 1e-3

    before = torch.get_num_threads()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(torch.nn.functional, "linear", linear)
            patch.setattr(time, "perf_counter", lambda: clock[0])
            patch.setattr(vanilla_cli, "cpu_has_bf16_kernels", lambda: True)
            vanilla_cli.cpu_bf16_speed.cache_clear()
            speed = vanilla_cli.cpu_bf16_speed()
    finally:
        vanilla_cli.cpu_bf16_speed.cache_clear()
    assert speed == pytest.approx(0.5)
    assert set(threads) == {1} and torch.get_num_threads() == before


def test_bf16_on_a_cpu_trains_with_eager_attention_unless_a_kernel_is_named(monkeypatch):
    # SDPA's bf16 backward on a CPU is the slower kernel (BENCHMARKS.md); float32 and GPUs keep SDPA.
    monkeypatch.setattr(vanilla_train_arguments, "cpu_bf16_problem", lambda: None)
    model_args, _, args = parse_arguments(["--output_dir", "unused", "--bf16", "true"])
    assert training_attention(model_args, args) == ("eager" if args.device.type == "cpu" else "sdpa")
    model_args, _, args = parse_arguments(["--output_dir", "unused"])
    assert training_attention(model_args, args) == "sdpa"
    model_args, _, args = parse_arguments(["--output_dir", "unused", "--bf16", "true", "--attn_implementation", "sdpa"])
    assert training_attention(model_args, args) == "sdpa"
