"""train.py --max_train_seconds and --save_at_seconds (vanilla_time_budget.py): training to a wall-clock budget."""

import json

import pytest
from test_train import QUICK, TINY, assert_loads_and_translates, run_train, write_jsonl

from vanilla_time_budget import model_at_folder

MAX_SECONDS, KEEP_AT_SECONDS = 4.0, 1.5


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    """A run with steps for hours, a 4 s budget, the model at 1.5 s kept, and a checkpoint every step (keeping 1)."""
    folder = tmp_path_factory.mktemp("budget")
    train_file = write_jsonl(folder / "train.jsonl", range(1, 41))
    output_dir = folder / "model"
    args = [*TINY, *QUICK, "--train_file", str(train_file), "--source_lang", "en", "--target_lang", "de"]
    args += ["--output_dir", str(output_dir), "--max_steps", "100000", "--save_strategy", "steps", "--save_steps", "1"]
    args += [
        "--save_total_limit",
        "1",
        "--max_train_seconds",
        str(MAX_SECONDS),
        "--save_at_seconds",
        str(KEEP_AT_SECONDS),
    ]
    result = run_train(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, result


def test_max_train_seconds_stops_training_after_the_budget(budget_run):
    output_dir, result = budget_run
    state = json.loads((output_dir / "trainer_state.json").read_text())
    runtime = next(entry["train_runtime"] for entry in state["log_history"] if "train_runtime" in entry)
    assert 0 < state["global_step"] < 100000
    assert MAX_SECONDS <= runtime < MAX_SECONDS + 30
    assert f"--max_train_seconds {MAX_SECONDS:g}: stopped after" in result.stdout
    assert_loads_and_translates(output_dir)


def test_save_at_seconds_keeps_that_model_beyond_checkpoint_rotation(budget_run):
    output_dir, result = budget_run
    kept = model_at_folder(output_dir, KEEP_AT_SECONDS)
    kept_step = json.loads((kept / "trainer_state.json").read_text())["global_step"]
    final_step = json.loads((output_dir / "trainer_state.json").read_text())["global_step"]
    assert 0 < kept_step < final_step
    assert not (output_dir / f"checkpoint-{kept_step}").exists()  # rotated away (save_total_limit 1); the copy stays
    assert not (kept / "optimizer.pt").exists()  # a model folder, not a checkpoint to resume
    assert f"saved the model at {KEEP_AT_SECONDS:g} s of training (step {kept_step})" in result.stdout
    assert_loads_and_translates(kept)


@pytest.mark.slow
def test_a_kept_model_is_replaced_only_with_overwrite_and_a_resumed_run_keeps_its_own(tmp_path):
    output_dir = tmp_path / "model"
    stale = [model_at_folder(output_dir, 600), model_at_folder(output_dir, 90)]
    for folder in stale:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    args = [*TINY, *QUICK, "--output_dir", str(output_dir), "--max_steps", "2", "--save_at_seconds", "600"]
    refused = run_train(*args)
    assert refused.returncode == 2 and "pass --overwrite_output_dir" in refused.stderr, refused.stderr[-3000:]
    assert all((folder / "config.json").read_text() == "{}" for folder in stale)
    result = run_train(*args, "--overwrite_output_dir")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output_dir / "config.json").is_file()
    assert not any(folder.exists() for folder in stale)  # the run ended before 600 s: it keeps none of the old run's

    # A run stopped by its budget after keeping its model at 0.5 s, resumed: the model kept stays the first part's.
    resumable = [*TINY, *QUICK, "--output_dir", str(tmp_path / "run"), "--max_steps", "100000"]
    resumable += ["--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "1"]
    resumable += ["--max_train_seconds", "2", "--save_at_seconds", "0.5"]
    assert run_train(*resumable).returncode == 0
    kept = model_at_folder(tmp_path / "run", 0.5)
    before = (kept / "model.safetensors").read_bytes()
    resumed = run_train(*resumable, "--resume_from_checkpoint", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "saved the model at 0.5 s" not in resumed.stdout
    assert (kept / "model.safetensors").read_bytes() == before


@pytest.mark.slow
def test_a_run_stopped_by_its_budget_between_checkpoints_counts_as_finished(tmp_path):
    """Stopped by --max_train_seconds after its last checkpoint (here the one --save_at_seconds forced), the run's
    model is newer than every checkpoint: --overwrite_output_dir replaces it as a finished model."""
    output_dir = tmp_path / "model"
    args = [*TINY, *QUICK, "--output_dir", str(output_dir), "--max_steps", "100000", "--save_strategy", "steps"]
    args += ["--save_steps", "100000", "--max_train_seconds", "3", "--save_at_seconds", "1"]
    assert run_train(*args).returncode == 0
    checkpoints = sorted(output_dir.glob("checkpoint-*"))
    final = json.loads((output_dir / "trainer_state.json").read_text())["global_step"]
    assert (
        len(checkpoints) == 1 and json.loads((checkpoints[0] / "trainer_state.json").read_text())["global_step"] < final
    )
    again = run_train(*args, "--overwrite_output_dir")
    assert again.returncode == 0, again.stderr[-3000:]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max_train_seconds", "0"], "error: --max_train_seconds is 0.0; expected a positive number of seconds"),
        (["--save_at_seconds", "-1"], "error: --save_at_seconds is -1.0; expected a positive number of seconds"),
        (
            ["--max_train_seconds", "5", "--save_at_seconds", "5"],
            "error: --save_at_seconds (5.0) must be less than --max_train_seconds (5.0), or no model is kept",
        ),
    ],
)
def test_time_budgets_that_keep_nothing_are_refused_in_one_line(tmp_path, flags, message):
    result = run_train(*TINY, *QUICK, "--output_dir", str(tmp_path / "model"), *flags)
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert not (tmp_path / "model").exists()


@pytest.mark.slow
def test_save_at_seconds_keeps_its_model_under_save_strategy_best(tmp_path):
    """Trainer's --save_strategy best saves after an evaluation only at a new best; the model at 0.5 s is saved even
    so (here only the first evaluation is a best: the loss falls and a higher one counts as better)."""
    output_dir = tmp_path / "model"
    args = [*TINY, *QUICK, "--output_dir", str(output_dir), "--max_steps", "100000", "--save_strategy", "best"]
    args += ["--eval_strategy", "steps", "--eval_steps", "1", "--metric_for_best_model", "eval_loss"]
    args += ["--greater_is_better", "true", "--max_train_seconds", "2", "--save_at_seconds", "0.5"]
    result = run_train(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    kept = model_at_folder(output_dir, 0.5)
    kept_step = json.loads((kept / "trainer_state.json").read_text())["global_step"]
    assert kept_step > 1  # the step the 0.5 s came at, not the best checkpoint's (step 1)
    assert f"saved the model at 0.5 s of training (step {kept_step})" in result.stdout
