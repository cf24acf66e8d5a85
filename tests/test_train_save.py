"""train.py keeps the user's work: resume, overwrite, the final save, kills, Ctrl-C, full disks, unwritable folders.

Faults are injected with VANILLA_FAULT=<point> (vanilla_output_dir.fault_point): the process kills itself there, or with
<point>:enospc fails as a full disk would. Points: checkpoint-<step> (mid-checkpoint: the weights written, not
the optimizer or trainer_state.json), final-save (the new model built beside output_dir), final-swap (the old
folder moved aside), final-swapped (the new folder in place, the old one's checkpoints not yet moved back) and
final-copy (a file copied into an output_dir that cannot be renamed, the others not yet).
"""

import errno
import filecmp
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from harness import ROOT, environment, run_cli
from safetensors.torch import load_file
from test_train import QUICK, TINY, write_jsonl

from vanilla_cli import UsageError
from vanilla_corpus import DataArguments
from vanilla_data_record import data_record, model_data_record, resume_data
from vanilla_files import complete_checkpoints
from vanilla_output_dir import (
    beside,
    files_the_final_save_replaces,
    finish_interrupted_save,
    hold_output_dir,
    release_output_dir,
    swap_in,
)

pytestmark = pytest.mark.slow
LANGS = ["--source_lang", "en", "--target_lang", "de"]
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "README.md", "data_args.json")


def run_train(*args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    return run_cli("train.py", *args, env=environment(**({} if fault is None else {"VANILLA_FAULT": fault})))


def quick_run(train_file: Path, output_dir: Path, *extra: str, fault: str | None = None):
    """A tiny model on `train_file`, `extra` flags last (they win)."""
    args = [*TINY, *QUICK, "--train_file", str(train_file), *LANGS, "--output_dir", str(output_dir), *extra]
    return run_train(*args, fault=fault)


def error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in MODEL_FILES if (folder / name).is_file()}


def hidden_siblings(output_dir: Path) -> list[str]:
    return sorted(path.name for path in output_dir.parent.glob(f".{output_dir.name}.*"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", range(1, 17))  # 16 pairs, 4 steps an epoch


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data) -> Path:
    """A finished run: checkpoints 2 and 4, the model of step 4."""
    output_dir = tmp_path_factory.mktemp("finished") / "run"
    relative = Path(os.path.relpath(data, ROOT))  # data_args.json records it absolute
    result = quick_run(relative, output_dir, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


NEW_RUN = ["--max_steps", "3", "--seed", "7", "--save_strategy", "steps", "--save_steps", "3"]


@pytest.fixture(scope="module")
def reported(tmp_path_factory, finished, data) -> Path:
    """`finished` with eval.py's report of its model on the test split: eval_results_test.json, predictions_test.txt."""
    output_dir = copy_of(finished, tmp_path_factory.mktemp("reported"))
    result = run_cli("eval.py", "--model", str(output_dir), "--test_file", str(data), *LANGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


@pytest.fixture(scope="module")
def new_run(tmp_path_factory, data) -> Path:
    """What retraining into `finished` with NEW_RUN saves: another model."""
    output_dir = tmp_path_factory.mktemp("new") / "run"
    result = quick_run(data, output_dir, *NEW_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


def copy_of(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    return copy


# 1 and 7: a run of the shipped CPU recipe (overwrite_output_dir: true), killed while saving checkpoint-6.
RECIPE = [str(ROOT / "recipes" / "multi30k_de_en_cpu.yaml"), *TINY, "--vocab_size", "300"]


@pytest.fixture(scope="module")
def killed_recipe_run(tmp_path_factory, data) -> tuple[Path, list[str]]:
    output_dir = tmp_path_factory.mktemp("recipe") / "rec"
    args = [*RECIPE, "--train_file", str(data), "--validation_file", str(data), "--test_file", str(data), *LANGS]
    args += ["--per_device_train_batch_size", "4", "--warmup_steps", "2", "--max_steps", "8", "--save_steps", "2"]
    args += ["--save_strategy", "steps", "--eval_strategy", "no", "--output_dir", str(output_dir)]
    result = run_train(*args, fault="checkpoint-6")
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    return output_dir, args


@pytest.fixture(scope="module")
def resumed_recipe_run(tmp_path_factory, killed_recipe_run) -> tuple[Path, subprocess.CompletedProcess]:
    run, args = killed_recipe_run
    output_dir = copy_of(run, tmp_path_factory.mktemp("resumed"))
    args = [*args, "--output_dir", str(output_dir), "--resume_from_checkpoint", "last"]
    return output_dir, run_train(*args)


def test_resuming_with_a_recipe_that_overwrites_keeps_every_checkpoint(killed_recipe_run, resumed_recipe_run):
    killed, _ = killed_recipe_run
    assert sorted(path.name for path in killed.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    output_dir, result = resumed_recipe_run
    assert result.returncode == 0, result.stderr[-3000:]
    # The recipe keeps 3 checkpoints: Trainer's rotation, not train.py, removed checkpoint-2.
    assert [path.name for path in complete_checkpoints(output_dir)] == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    assert "--overwrite_output_dir" not in result.stdout


def test_resume_last_skips_an_incomplete_checkpoint_and_names_it(killed_recipe_run, resumed_recipe_run):
    killed, _ = killed_recipe_run
    assert (killed / "checkpoint-6" / "model.safetensors").is_file()
    assert not (killed / "checkpoint-6" / "trainer_state.json").exists()
    output_dir, result = resumed_recipe_run
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: skipping")]
    assert len(warnings) == 1 and "checkpoint-6" in warnings[0] and "incomplete" in warnings[0]
    # Resumed from checkpoint-4: the log holds one entry per step with no step twice.
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    assert json.loads((output_dir / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6


def test_a_checkpoint_killed_while_rewritten_is_not_complete(tmp_path, finished, data):
    """Resuming from an older checkpoint rewrites the newer ones: killed mid-way, one is no mix of two saves."""
    output_dir = copy_of(finished, tmp_path)
    resume = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"]
    resume += ["--resume_from_checkpoint", str(output_dir / "checkpoint-2")]
    assert quick_run(data, output_dir, *resume, fault="checkpoint-4").returncode == -signal.SIGKILL
    assert complete_checkpoints(output_dir) == [output_dir / "checkpoint-2"]


@pytest.mark.parametrize("damaged", ["optimizer.pt", "model.safetensors", "loss_total.json"])
def test_a_checkpoint_with_a_file_cut_short_is_named_and_not_resumed_from(tmp_path, finished, data, damaged):
    """A resume reads the newest checkpoint's files only once training starts (torch's traceback): a file cut short
    (a full disk, a copy stopped midway) makes the checkpoint one that `last` skips with a warning, as an incomplete
    one, and that an explicit resume refuses in one line naming the file and the checkpoint before it."""
    output_dir = copy_of(finished, tmp_path)
    path = output_dir / "checkpoint-4" / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    resume = ["--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2", "--resume_from_checkpoint"]
    refused = quick_run(data, output_dir, *resume, str(output_dir / "checkpoint-4"))
    assert error_line(refused) == (
        f"error: --resume_from_checkpoint: {path} is cut short or damaged; resume from {output_dir / 'checkpoint-2'}"
    )
    assert complete_checkpoints(output_dir) == [output_dir / "checkpoint-2"]
    result = quick_run(data, output_dir, *resume, "last")
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: skipping")]
    assert warnings[0] == f"warning: skipping {output_dir / 'checkpoint-4'}: its {damaged} is cut short or damaged"
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 6
    assert complete_checkpoints(output_dir) == [
        output_dir / name for name in ("checkpoint-2", "checkpoint-4", "checkpoint-6")
    ]


def change_in_place(path: Path) -> None:
    """Flips bytes in the middle of a torch.save file's first record (data.pkl, which torch.load reads first), the
    file's size kept."""
    content = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", content[26:30])  # the zip's first local header
    start = 30 + name_length + extra_length
    middle = start + zipfile.ZipFile(path).infolist()[0].file_size // 2
    content[middle : middle + 16] = bytes(byte ^ 0xFF for byte in content[middle : middle + 16])
    path.write_bytes(bytes(content))


@pytest.mark.parametrize("damaged", ["optimizer.pt", "scheduler.pt"])
def test_a_checkpoint_with_a_file_changed_in_place_is_named_and_not_resumed_from(tmp_path, finished, data, damaged):
    """A torch file damaged in place with its size kept (a bad sector, a copy gone wrong) is found by its checksums
    before training starts, not in torch.load's traceback: an explicit resume names the file and the checkpoint before
    it, and `last` passes the checkpoint over with a warning."""
    output_dir = copy_of(finished, tmp_path)
    path = output_dir / "checkpoint-4" / damaged
    change_in_place(path)
    resume = ["--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2", "--resume_from_checkpoint"]
    refused = quick_run(data, output_dir, *resume, str(output_dir / "checkpoint-4"))
    assert error_line(refused) == (
        f"error: --resume_from_checkpoint: {path} is cut short or damaged; resume from {output_dir / 'checkpoint-2'}"
    )
    result = quick_run(data, output_dir, *resume, "last")
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: skipping")]
    assert warnings == [f"warning: skipping {output_dir / 'checkpoint-4'}: its {damaged} is cut short or damaged"]
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 6


@pytest.mark.parametrize("earlier", [True, False], ids=["with-an-earlier-checkpoint", "alone"])
def test_resuming_from_a_checkpoint_without_its_state_says_what_to_do_instead(tmp_path, finished, data, earlier):
    """A checkpoint whose trainer_state.json is cut short is refused in one line that names the checkpoint to resume
    from instead, or, with none beside it, says to move it away and train from the start."""
    output_dir = copy_of(finished, tmp_path)
    checkpoint = output_dir / "checkpoint-4"
    state = checkpoint / "trainer_state.json"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    if not earlier:
        shutil.rmtree(output_dir / "checkpoint-2")
    refused = quick_run(data, output_dir, "--max_steps", "6", "--resume_from_checkpoint", str(checkpoint))
    instead = (
        f"resume from {output_dir / 'checkpoint-2'}"
        if earlier
        else f"no other checkpoint beside it is complete: move {checkpoint} away to train from the start"
    )
    assert error_line(refused) == (
        f"error: --resume_from_checkpoint: {checkpoint} is not a complete checkpoint (no readable trainer_state.json, "
        f"which Trainer writes last); {instead}"
    )


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_resuming_from_a_path_that_is_no_folder_says_so(tmp_path, finished, data, kind):
    """A mistyped checkpoint path is named as missing (or a file), not as a checkpoint to move away."""
    output_dir = copy_of(finished, tmp_path)
    checkpoint = output_dir / "checkpoint-5"
    if kind == "file":
        checkpoint.write_text("")
    refused = quick_run(data, output_dir, "--max_steps", "6", "--resume_from_checkpoint", str(checkpoint))
    what = "is a file" if kind == "file" else "does not exist"
    assert error_line(refused) == (
        f"error: --resume_from_checkpoint {checkpoint} {what}; expected a checkpoint-* folder, or last (the newest "
        "complete checkpoint in --output_dir)"
    )


def test_a_checkpoint_missing_a_processs_random_state_is_incomplete(tmp_path, finished, data):
    """Under DDP each process writes its rng_state_<rank>.pth, and the main one may write trainer_state.json first: a
    process killed then leaves a checkpoint that resumes with another random stream. It is incomplete."""
    output_dir = copy_of(finished, tmp_path)
    checkpoint = output_dir / "checkpoint-4"
    (checkpoint / "rng_state.pth").rename(checkpoint / "rng_state_0.pth")  # as rank 0 of two names its state
    record = json.loads((checkpoint / "batching.json").read_text())
    (checkpoint / "batching.json").write_text(json.dumps({**record, "processes": 2}))
    assert complete_checkpoints(output_dir) == [output_dir / "checkpoint-2"]
    resume = ["--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2", "--resume_from_checkpoint"]
    refused = quick_run(data, output_dir, *resume, str(checkpoint))
    assert error_line(refused) == (
        f"error: --resume_from_checkpoint: {checkpoint} is not a complete checkpoint (no rng_state_1.pth: a process "
        f"stopped while saving it); resume from {output_dir / 'checkpoint-2'}"
    )


@pytest.mark.parametrize("which", ["last", "checkpoint-2"])
def test_resuming_from_a_checkpoint_saved_with_save_only_model_is_refused(tmp_path, data, which):
    """A --save_only_model checkpoint holds no optimizer or scheduler state: Trainer would continue from it with a new
    optimizer and the schedule's warmup again. The resume is one error line, and the run's folder stays as it was."""
    output_dir = tmp_path / "run"
    args = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--save_only_model", "true"]
    assert quick_run(data, output_dir, *args, fault="checkpoint-4").returncode == -signal.SIGKILL
    checkpoint = output_dir / "checkpoint-2"
    before = sorted(path.relative_to(output_dir) for path in output_dir.rglob("*"))
    resume = which if which == "last" else str(output_dir / which)
    refused = quick_run(data, output_dir, *args, "--resume_from_checkpoint", resume)
    assert error_line(refused) == (
        f"error: --resume_from_checkpoint: {checkpoint} holds no optimizer or scheduler state (a checkpoint saved "
        "with --save_only_model holds the model alone), and a run cannot continue from it: Trainer would start a new "
        "optimizer and the learning-rate schedule from step 0; resume from a checkpoint that holds them, or train anew"
    )
    assert sorted(path.relative_to(output_dir) for path in output_dir.rglob("*")) == before


def test_overwrite_refuses_to_delete_an_unfinished_run(tmp_path, killed_recipe_run):
    run, args = killed_recipe_run
    output_dir = copy_of(run, tmp_path)
    before = sorted(str(path.relative_to(output_dir)) for path in output_dir.rglob("*"))
    result = run_train(*args, "--output_dir", str(output_dir))  # the recipe's overwrite_output_dir, no resume
    line = error_line(result)
    assert "unfinished run" in line and "checkpoint-6" in line and "--resume_from_checkpoint last" in line
    assert sorted(str(path.relative_to(output_dir)) for path in output_dir.rglob("*")) == before


def test_overwrite_replaces_a_finished_model_as_a_whole_and_says_so(tmp_path, reported, data):
    output_dir = copy_of(reported, tmp_path)
    old = snapshot(output_dir)
    (output_dir / "averaged-last-2").mkdir()
    (output_dir / "averaged-last-2" / "averaged_from.json").write_text("{}")
    (output_dir / "averaged-last-3").mkdir()  # not eval.py's: no marker
    (output_dir / "runs").mkdir()
    (output_dir / "runs" / "events").write_text("log")
    (output_dir / "notes.txt").write_text("mine")
    result = quick_run(data, output_dir, "--max_steps", "3", "--seed", "7", "--overwrite_output_dir", "true")
    assert result.returncode == 0, result.stderr[-3000:]

    lines = [line for line in result.stdout.splitlines() if line.startswith("--overwrite_output_dir:")]
    assert len(lines) == 1 and "replacing the finished model" in lines[0] and "checkpoint-4" in lines[0], lines
    assert lines[0].endswith("; its reports eval_results_test.json, predictions_test.txt go with it"), lines
    new = snapshot(output_dir)
    assert new["model.safetensors"] != old["model.safetensors"]
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 3
    assert not list(output_dir.glob("checkpoint-*")) and not (output_dir / "averaged-last-2").exists()
    assert (output_dir / "averaged-last-3").is_dir() and (output_dir / "runs" / "events").read_text() == "log"
    assert (output_dir / "notes.txt").read_text() == "mine"
    assert not (output_dir / "eval_results_test.json").exists() and not (output_dir / "predictions_test.txt").exists()
    assert hidden_siblings(output_dir) == []


# Named like a model's weights or eval.py's reports, written by the user or another tool.
USERS_FILES = {
    "vectors.bin": "word vectors",
    "embeddings.safetensors": "embeddings",
    "eval_results_mine.json": '{"bleu": 12.5}\n',
    "predictions_mine.txt": "my hypotheses\n",
}


def test_overwrite_keeps_files_that_train_py_and_eval_py_did_not_write_and_says_so(tmp_path, reported, data):
    output_dir = copy_of(reported, tmp_path)
    old = snapshot(output_dir)
    (output_dir / "pytorch_model.bin").write_text("the old model's weights, saved without safetensors")
    for name, text in USERS_FILES.items():
        (output_dir / name).write_text(text)
    result = quick_run(data, output_dir, "--max_steps", "3", "--seed", "7", "--overwrite_output_dir", "true")
    assert result.returncode == 0, result.stderr[-3000:]

    kept = {path.name: path.read_text() for path in output_dir.iterdir() if path.name in USERS_FILES}
    assert kept == USERS_FILES
    assert snapshot(output_dir)["model.safetensors"] != old["model.safetensors"]
    gone = ("pytorch_model.bin", "eval_results_test.json", "predictions_test.txt")
    assert not [name for name in gone if (output_dir / name).exists()]
    assert hidden_siblings(output_dir) == []
    lines = [line for line in result.stdout.splitlines() if line.startswith("--overwrite_output_dir:")]
    assert len(lines) == 1 and lines[0].endswith(
        "; its reports eval_results_test.json, predictions_test.txt go with it; embeddings.safetensors, "
        "eval_results_mine.json, predictions_mine.txt, vectors.bin stay (train.py and eval.py did not write them)"
    ), lines


def test_overwrite_keeps_the_old_runs_checkpoints_until_the_new_data_is_read(tmp_path, finished):
    """Bad training data (or Ctrl-C while a large corpus loads) stops an overwriting run before it has trained: the
    finished model's checkpoints and averaged models are still there."""
    output_dir = copy_of(finished, tmp_path)
    (output_dir / "averaged-last-2").mkdir()
    (output_dir / "averaged-last-2" / "averaged_from.json").write_text("{}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"translation": {"en": "one"}}\n')
    line = error_line(quick_run(bad, output_dir, "--max_steps", "3", "--overwrite_output_dir", "true"))
    assert line.startswith(f"error: {bad}") and "'de'" in line
    assert sorted(path.name for path in output_dir.iterdir() if path.is_dir()) == [
        "averaged-last-2",
        "checkpoint-2",
        "checkpoint-4",
    ]


@pytest.mark.parametrize(
    ("point", "survivor"), [("final-save", "old"), ("final-swap", "new"), ("final-swapped", "new")]
)
def test_final_save_killed_at_any_point_leaves_the_old_or_the_new_model(
    tmp_path, finished, new_run, data, point, survivor
):
    """A reader sees the old model or the new one, never a mix; the next start finishes or drops the swap."""
    output_dir = copy_of(finished, tmp_path)
    (output_dir / "notes.txt").write_text("mine")
    models = {"old": snapshot(output_dir), "new": snapshot(new_run)}
    assert models["old"]["model.safetensors"] != models["new"]["model.safetensors"]

    result = quick_run(data, output_dir, *NEW_RUN, "--overwrite_output_dir", "true", fault=point)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    if output_dir.exists():
        assert snapshot(output_dir)["model.safetensors"] == models[survivor]["model.safetensors"]
        assert snapshot(output_dir) == {**models[survivor], "README.md": snapshot(output_dir)["README.md"]}

    # Any later start completes the swap (or drops the unfinished new model) before it does anything else.
    after = run_train("--output_dir", str(output_dir))
    assert "already holds a model" in error_line(after)
    assert snapshot(output_dir) == {**models[survivor], "README.md": snapshot(output_dir)["README.md"]}
    assert (output_dir / "notes.txt").read_text() == "mine"
    assert hidden_siblings(output_dir) == []
    # The overwrite removed the old run's checkpoints; the new run's stays, finished or not.
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-3"]


def test_a_symlinked_output_dir_keeps_its_link_and_the_model_lands_in_its_target(tmp_path, finished, new_run, data):
    target = copy_of(finished, tmp_path / "disk")
    (target / "notes.txt").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(target)
    result = quick_run(data, link, *NEW_RUN, "--overwrite_output_dir", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert snapshot(target) == {**snapshot(new_run), "README.md": snapshot(target)["README.md"]}
    assert (target / "notes.txt").read_text() == "mine"
    assert sorted(path.name for path in target.glob("checkpoint-*")) == ["checkpoint-3"]
    assert hidden_siblings(target) == [] and hidden_siblings(link) == []


def test_output_dir_dot_saves_into_the_working_folder_which_stays_in_place(tmp_path, finished, new_run, data):
    """Swapped by renames, the working folder would be the removed old one: the shell in it would see nothing."""
    here = copy_of(finished, tmp_path)
    (here / "notes.txt").write_text("mine")
    folder = here.stat().st_ino
    args = [*TINY, *QUICK, "--train_file", str(data), *LANGS, "--output_dir", ".", *NEW_RUN]
    result = run_cli("train.py", *args, "--overwrite_output_dir", "true", cwd=here)
    assert result.returncode == 0, result.stderr[-3000:]
    assert here.stat().st_ino == folder
    assert snapshot(here) == {**snapshot(new_run), "README.md": snapshot(here)["README.md"]}
    assert (here / "notes.txt").read_text() == "mine"
    assert sorted(path.name for path in here.glob("checkpoint-*")) == ["checkpoint-3"]
    assert hidden_siblings(here) == [] and not list(here.glob(".*"))


def stage_new_model(output_dir: Path, new_run: Path) -> None:
    """The new model's files in `.<name>.saving`, as save_final_model leaves them before it swaps them in."""
    staging = beside(output_dir, "saving")
    staging.mkdir()
    for path in new_run.iterdir():
        if path.is_file():
            shutil.copy(path, staging / path.name)


def refuse_to_rename(monkeypatch, folder: Path, code: int) -> None:
    """os.rename of `folder` itself fails with `code`, as for a mount point; every other rename works."""
    rename = os.rename

    def refusing(source, target):
        if Path(source) == folder:
            raise OSError(code, os.strerror(code), str(source))
        rename(source, target)

    monkeypatch.setattr(os, "rename", refusing)


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EXDEV, errno.EPERM], ids=errno.errorcode.get)
def test_an_output_dir_that_cannot_be_renamed_takes_the_new_model_file_by_file(
    tmp_path, monkeypatch, finished, new_run, code
):
    output_dir = copy_of(finished, tmp_path)
    (output_dir / "notes.txt").write_text("mine")
    (output_dir / "pytorch_model.bin").write_text("the old model's weights, saved without safetensors")
    (output_dir / "vectors.bin").write_text("word vectors")
    folder = output_dir.stat().st_ino
    stage_new_model(output_dir, new_run)
    refuse_to_rename(monkeypatch, output_dir, code)
    swap_in(output_dir)
    assert output_dir.stat().st_ino == folder
    assert snapshot(output_dir) == snapshot(new_run)
    assert not (output_dir / "pytorch_model.bin").exists() and (output_dir / "notes.txt").read_text() == "mine"
    assert (output_dir / "vectors.bin").read_text() == "word vectors"
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert hidden_siblings(output_dir) == [] and not list(output_dir.glob(".*"))


def test_a_file_by_file_save_cut_short_is_finished_by_the_next_start(tmp_path, monkeypatch, finished, new_run):
    output_dir = copy_of(finished, tmp_path)
    old = snapshot(output_dir)
    stage_new_model(output_dir, new_run)
    refuse_to_rename(monkeypatch, output_dir, errno.EBUSY)
    monkeypatch.setenv("VANILLA_FAULT", "final-copy:enospc")  # the disk full after the first file
    with pytest.raises(OSError):
        swap_in(output_dir)
    assert snapshot(output_dir) not in (old, snapshot(new_run))
    monkeypatch.delenv("VANILLA_FAULT")
    finish_interrupted_save(output_dir)
    assert snapshot(output_dir) == snapshot(new_run)
    assert hidden_siblings(output_dir) == [] and not list(output_dir.glob(".*"))


def test_resuming_a_complete_run_trains_no_further(tmp_path, finished, data):
    output_dir = copy_of(finished, tmp_path)
    before = snapshot(output_dir)
    predict = ["--test_file", str(data), "--do_predict"]
    result = quick_run(data, output_dir, "--max_steps", "4", "--resume_from_checkpoint", "last", *predict)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "completed the run (step 4 of 4): nothing to train" in result.stdout
    note = "note: --do_predict scores a run's model as it finishes; score this one with: "
    command = next(line for line in result.stderr.splitlines() if line.startswith(note)).removeprefix(note)
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert snapshot(output_dir) == before
    # The run was trained without test data: the command names the test file --do_predict was given.
    assert_command_scores(command, output_dir, "test", data)


def assert_command_scores(command: str, model: Path, split: str, data: Path) -> None:
    """A printed `python eval.py ...` command, run as a shell splits it, scores `model` on `split` of `data`."""
    words = shlex.split(command)
    assert words[:4] == ["python", str(ROOT / "eval.py"), "--model", str(model)], command  # beside the train.py run
    result = run_cli("eval.py", *words[2:])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((model / f"eval_results_{split}.json").read_text())
    assert (report["data"], report["split"]) == (str(data), split)


@pytest.mark.parametrize("validation", [False, True])
def test_the_command_printed_after_a_run_without_test_data_works_as_pasted(tmp_path, data, validation):
    """eval.py scores the test split data_args.json names: a run without one is scored on its validation split, and
    one with neither is pointed at translating."""
    output_dir = tmp_path / "my run"
    extra = ["--validation_file", str(data)] if validation else []
    result = quick_run(data, output_dir, "--max_steps", "1", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    if validation:
        assert_command_scores(line.removeprefix("evaluate it with: "), output_dir, "validation", data)
        return
    words = shlex.split(line.removeprefix("translate with: "))
    assert words[:3] == ["python", str(ROOT / "eval.py"), "translate"], line
    translated = run_cli("eval.py", *words[2:], stdin="seven\neight\n")
    assert translated.returncode == 0, translated.stderr[-3000:]
    assert len(translated.stdout.splitlines()) == 2


def test_resuming_a_complete_run_killed_before_its_final_save_saves_the_last_checkpoint(tmp_path, data):
    output_dir = tmp_path / "run"
    args = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"]
    assert quick_run(data, output_dir, *args, fault="final-save").returncode == -signal.SIGKILL
    # The killed run's lock file stays (the kernel released its lock): the next run takes it, and removes it.
    assert not (output_dir / "config.json").exists()
    assert hidden_siblings(output_dir) == [".run.lock", ".run.saving"]
    result = quick_run(data, output_dir, *args, "--resume_from_checkpoint", "last", "--validation_file", str(data))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nothing to train; saving its model" in result.stdout
    # The results name the checkpoint's epoch, and results only.
    results = json.loads((output_dir / "all_results.json").read_text())
    epoch = json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())["epoch"]
    assert results["epoch"] == epoch > 0 and not [name for name in results if "preparation" in name]
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    final, last = (load_file(folder / "model.safetensors") for folder in (output_dir, output_dir / "checkpoint-4"))
    assert final.keys() == last.keys() and all((final[name] == last[name]).all() for name in final)
    assert hidden_siblings(output_dir) == []


def test_a_run_that_keeps_its_best_model_resumes_and_is_replaced_as_finished_with_it(tmp_path, data):
    """With --load_best_model_at_end a finished run's model is its best checkpoint's, not its last one's."""
    output_dir = tmp_path / "run"
    # The higher evaluation loss is "better": the best checkpoint is not the last one.
    args = ["--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "steps"]
    args += ["--eval_steps", "2", "--validation_file", str(data), "--load_best_model_at_end", "true"]
    args += ["--metric_for_best_model", "loss", "--greater_is_better", "true"]
    assert quick_run(data, output_dir, *args, fault="final-save").returncode == -signal.SIGKILL
    best = Path(json.loads((output_dir / "checkpoint-6" / "trainer_state.json").read_text())["best_model_checkpoint"])
    assert best.name != "checkpoint-6"
    result = quick_run(data, output_dir, *args, "--resume_from_checkpoint", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"nothing to train; saving its model (the best: {best.name})" in result.stdout
    assert filecmp.cmp(output_dir / "model.safetensors", output_dir / best.name / "model.safetensors", shallow=False)
    result = quick_run(data, output_dir, *args, "--resume_from_checkpoint", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"its model is saved in {output_dir}" in result.stdout
    result = quick_run(data, output_dir, *args, "--overwrite_output_dir", "true", "--max_steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replacing the finished model" in result.stdout


def test_train_loss_after_a_resume_is_the_mean_over_the_whole_run(tmp_path, data):
    output_dir = tmp_path / "run"
    args = ["--save_strategy", "steps", "--save_steps", "3", "--logging_steps", "1"]
    assert quick_run(data, output_dir, *args, "--max_steps", "3").returncode == 0
    result = quick_run(data, output_dir, *args, "--max_steps", "6", "--resume_from_checkpoint", "last")
    assert result.returncode == 0, result.stderr[-3000:]

    history = json.loads((output_dir / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    losses = {entry["step"]: entry["loss"] for entry in history if "loss" in entry}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    whole_run = sum(losses.values()) / 6
    resumed_only = sum(losses[step] for step in (4, 5, 6)) / 3
    assert abs(whole_run - resumed_only) > 1e-3
    reported = json.loads((output_dir / "all_results.json").read_text())["train_loss"]
    assert reported == pytest.approx(whole_run, rel=1e-5)
    # Trainer's own summary of the run (its log, trainer_state.json) says the same.
    final_history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    summary = next(entry for entry in reversed(final_history) if "train_runtime" in entry)
    assert summary["train_loss"] == pytest.approx(whole_run, rel=1e-5)
    assert f"| train_loss | {reported:.4g} |" in (output_dir / "README.md").read_text()


def test_resuming_inside_an_epoch_with_other_batching_warns_and_at_an_epochs_end_does_not(tmp_path, data):
    """Trainer skips as many batches of the resumed epoch as were trained: cut otherwise, they are other pairs."""
    inside, at_the_end = tmp_path / "inside", tmp_path / "end"
    save = ["--save_strategy", "steps", "--save_steps", "2"]
    assert quick_run(data, inside, *save, "--max_steps", "2").returncode == 0  # half of the first epoch
    assert quick_run(data, at_the_end, *save, "--max_steps", "4").returncode == 0  # the whole first epoch
    assert json.loads((inside / "checkpoint-2" / "batching.json").read_text()) == {
        "processes": 1,
        "gradient_accumulation_steps": 1,
        "data_seed": 42,
        "per_device_train_batch_size": 4,
        "train_sampling_strategy": "group_by_length",
    }
    other = ["--per_device_train_batch_size", "2", "--data_seed", "7", "--resume_from_checkpoint", "last"]
    result = quick_run(data, inside, *save, "--max_steps", "4", *other)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        f"warning: {inside / 'checkpoint-2'} stopped inside an epoch (epoch 0.50) that this run batches otherwise: "
        "data_seed 42 (now 7); per_device_train_batch_size 4 (now 2). Trainer skips as many of the new batches as it "
        "had trained, so the rest of this epoch trains some pairs twice and leaves others out (later epochs are "
        "whole); resume with the checkpoint's batching to continue the run exactly"
    ]
    result = quick_run(data, at_the_end, *save, "--max_steps", "6", *other)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batches otherwise" not in result.stderr
    result = quick_run(data, inside, *save, "--max_steps", "6", "--resume_from_checkpoint", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batches otherwise" in result.stderr  # checkpoint-4 of the resumed run batched by 2, from seed 7


def test_unwritable_output_dir_fails_before_training(tmp_path, data):
    if os.geteuid() == 0:  # root writes through permission bits: take a folder the kernel refuses to anyone
        output_dir = Path("/sys/fs")
    else:
        output_dir = tmp_path / "locked"
        output_dir.mkdir()
        output_dir.chmod(0o555)
    result = quick_run(data, output_dir, "--max_steps", "200")
    assert "cannot be written" in error_line(result)
    assert "padding:" not in result.stdout  # stopped before the Trainer was built


def test_a_folder_without_a_model_keeps_the_users_files_that_a_final_save_would_replace(tmp_path, finished, data):
    output_dir = tmp_path / "mine"
    output_dir.mkdir()
    mine = {"notes.txt": "mine", "corpus.bin": "data", "my.safetensors": "weights", "README.md": "about"}
    for name, text in mine.items():
        (output_dir / name).write_text(text)
    for flags in ([], ["--overwrite_output_dir", "true"]):  # that flag replaces a finished model only
        line = error_line(quick_run(data, output_dir, "--max_steps", "2", *flags))
        assert (
            "holds no model but files that the final save would replace: README.md, corpus.bin, my.safetensors" in line
        )
    assert {path.name: path.read_text() for path in output_dir.iterdir()} == mine
    for name in ("corpus.bin", "my.safetensors", "README.md"):
        (output_dir / name).unlink()
    assert quick_run(data, output_dir, "--max_steps", "2").returncode == 0
    assert (output_dir / "notes.txt").read_text() == "mine" and (output_dir / "config.json").is_file()
    # Every top-level file a final save writes is one the check looks for.
    assert files_the_final_save_replaces(finished) == sorted(path.name for path in finished.iterdir() if path.is_file())


def test_a_second_run_into_an_output_dir_in_use_stops_before_it_writes_anything(tmp_path, data):
    """Two runs into one folder would write their checkpoints over each other's, and the second's start would remove
    the first's final save half-way: the second stops, naming the first's process, until the first has ended."""
    output_dir = tmp_path / "run"
    lock = output_dir.parent / ".run.lock"
    args = [*TINY, *QUICK, "--train_file", str(data), *LANGS, "--output_dir", str(output_dir), "--max_steps", "100000"]
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        env=environment(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().startswith(f"{first.pid} on ")) and time.monotonic() < deadline:
            assert first.poll() is None
            time.sleep(0.1)
        for flags in ([], ["--overwrite_output_dir", "true"], ["--resume_from_checkpoint", "last"]):
            second = quick_run(
                data, output_dir, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1", *flags
            )
            assert f"is in use by another train.py run (process {first.pid} on " in error_line(second)
            assert "padding:" not in second.stdout  # stopped before its data was loaded
        assert first.poll() is None  # still training, undisturbed
        assert not (output_dir / "config.json").exists() and not list(output_dir.glob("checkpoint-*"))
    finally:
        first.kill()
        first.wait()
    # Killed, the first run holds nothing any more; its lock file stays until the next run, which takes the folder
    # and removes the file when it ends.
    assert hidden_siblings(output_dir) == [".run.lock"]
    result = quick_run(data, output_dir, "--max_steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output_dir / "config.json").is_file() and hidden_siblings(output_dir) == []


def test_a_held_output_dir_is_given_up_with_its_lock_file_and_can_be_held_again(tmp_path):
    output_dir = tmp_path / "new" / "run"  # its parent made for the lock file
    hold_output_dir(output_dir)
    try:
        assert (tmp_path / "new" / ".run.lock").read_text() == f"{os.getpid()} on {socket.gethostname()}\n"
        with pytest.raises(UsageError, match=f"in use by another train.py run \\(process {os.getpid()} on "):
            hold_output_dir(output_dir)  # flock is per open file: a second holder in one process is refused too
    finally:
        release_output_dir(output_dir)
    assert hidden_siblings(output_dir) == [] and not output_dir.exists()
    hold_output_dir(output_dir)
    release_output_dir(output_dir)
    release_output_dir(output_dir)  # giving up a folder not held does nothing


@pytest.mark.parametrize("stop, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["sigint", "sigterm"])
def test_a_signal_during_training_names_the_last_checkpoint_and_exits_128_plus_it(tmp_path, data, stop, code):
    """Ctrl-C, and SIGTERM as torchrun, Slurm or Kubernetes stop a job: the same clean stop, with the signal's code."""
    output_dir = tmp_path / "run"
    args = [*TINY, *QUICK, "--train_file", str(data), *LANGS, "--output_dir", str(output_dir)]
    args += ["--max_steps", "100000", "--save_strategy", "steps", "--save_steps", "2"]
    command = [sys.executable, str(ROOT / "train.py"), *args]
    # As from a terminal: a suite launched in the background (`cmd &`) passes SIGINT on ignored, and Python keeps it so.
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    process = subprocess.Popen(
        command,
        env=environment(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 120
    while not (output_dir / "checkpoint-2" / "trainer_state.json").exists() and time.monotonic() < deadline:
        assert process.poll() is None
        time.sleep(0.2)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("interrupted: ")]
    newest = complete_checkpoints(output_dir)[-1]
    assert lines == [f"interrupted: the last checkpoint is {newest} (continue with --resume_from_checkpoint last)"]
    assert len(list(output_dir.glob("checkpoint-*"))) == len(complete_checkpoints(output_dir))


def test_disk_full_during_a_checkpoint_keeps_the_older_model_and_no_partial_checkpoint(tmp_path, finished, data):
    output_dir = copy_of(finished, tmp_path)
    before = snapshot(output_dir)
    args = ["--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2", "--overwrite_output_dir", "true"]
    result = quick_run(data, output_dir, *args, fault="checkpoint-4:enospc")
    line = error_line(result)
    assert "No space left on device" in line and "removed the partial checkpoint-4" in line
    assert "checkpoint-2" in line
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-2"]
    assert complete_checkpoints(output_dir) == [output_dir / "checkpoint-2"]
    assert snapshot(output_dir) == before
    assert hidden_siblings(output_dir) == []


def test_disk_full_during_the_final_save_keeps_the_older_model(tmp_path, finished, data):
    output_dir = copy_of(finished, tmp_path)
    before = snapshot(output_dir)
    result = quick_run(
        data, output_dir, "--max_steps", "2", "--overwrite_output_dir", "true", fault="final-save:enospc"
    )
    line = error_line(result)
    assert "cannot save the model" in line and "No space left on device" in line
    assert snapshot(output_dir) == before
    assert hidden_siblings(output_dir) == []
    assert not list(tmp_path.rglob("*.tmp"))


def test_resume_refuses_shape_flags_that_differ_from_the_checkpoint(tmp_path, finished, data):
    output_dir = copy_of(finished, tmp_path)
    resume = ["--max_steps", "6", "--resume_from_checkpoint", "last"]
    result = quick_run(data, output_dir, *resume, "--preset", "small", "--d_model", "32", "--norm_first", "true")
    line = error_line(result)
    assert "--d_model 32 (the checkpoint's: 16)" in line and "--norm_first True" in line
    assert "--preset small (decoder_layers 3)" in line
    assert "--num_heads" not in line  # given, and equal to the checkpoint's
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_a_resume_whose_flags_plan_another_number_of_steps_says_so(tmp_path, finished, data):
    """Trainer resumes with the flags given, not the run's: resumed without them, a run of 4 steps would train on
    to the default schedule's end. A note names both plans; the run's own flags give none."""
    output_dir = copy_of(finished, tmp_path)
    (output_dir / "checkpoint-4").rename(output_dir / "checkpoint-4-moved")  # resume from checkpoint-2
    note = f"note: {output_dir / 'checkpoint-2'}'s run planned 4 steps (trainer_state.json in it); with the flags"
    resume = ["--resume_from_checkpoint", "last"]
    same = quick_run(data, output_dir, "--max_steps", "4", *resume)
    assert same.returncode == 0, same.stderr[-3000:]
    assert "planned" not in same.stderr
    shutil.rmtree(output_dir / "checkpoint-4", ignore_errors=True)
    longer = quick_run(data, output_dir, "--max_steps", "6", *resume)
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert f"{note} given, training goes to step 6: pass the run's own flags" in longer.stderr


def test_resuming_without_data_flags_continues_on_the_checkpoints_data(tmp_path, finished):
    """Not on the embedded task, the data of a run given no data flag: the checkpoint's data_args.json says."""
    output_dir = copy_of(finished, tmp_path)
    record = (output_dir / "checkpoint-4" / "data_args.json").read_text()
    assert json.loads(record)["train_file"] and record == (output_dir / "data_args.json").read_text()
    result = run_train(
        *TINY, *QUICK, "--output_dir", str(output_dir), "--max_steps", "6", "--resume_from_checkpoint", "last"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((output_dir / "trainer_state.json").read_text())["epoch"] == 1.5  # 4 steps an epoch: its 16 pairs
    assert (output_dir / "data_args.json").read_text() == record


def test_max_samples_cut_each_split_and_a_resume_keeps_the_runs_training_pairs(tmp_path, data):
    """run_translation.py's --max_train_samples / --max_eval_samples / --max_predict_samples: the first N pairs of
    each split. The training cut is part of the run's data (data_args.json, the card): a resume without the flag
    keeps it, one with another value is refused by name."""
    output_dir = tmp_path / "run"
    cut = ["--max_train_samples", "8", "--validation_file", str(data), "--max_eval_samples", "5"]
    cut += ["--test_file", str(data), "--do_predict", "--max_predict_samples", "3", "--save_steps", "2"]
    result = quick_run(data, output_dir, *cut, "--max_steps", "4", "--save_strategy", "steps")
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["epoch"] == 2.0  # 8 pairs in batches of 4: 2 steps an epoch (the file's 16 pairs take 4)
    assert "test split (3 sentences)" in result.stdout
    record = json.loads((output_dir / "data_args.json").read_text())
    assert record["max_train_samples"] == 8
    assert "(at most the first 8 pairs of its training split)" in (output_dir / "README.md").read_text()

    resume = ["--max_steps", "6", "--resume_from_checkpoint", "last", "--save_strategy", "no"]
    resumed = quick_run(data, output_dir, *resume)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((output_dir / "trainer_state.json").read_text())["epoch"] == 3.0  # still 8 pairs an epoch
    line = error_line(quick_run(data, output_dir, *resume, "--max_train_samples", "10"))
    assert "--max_train_samples 10 (the checkpoint's: 8)" in line


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--max_train_samples", "0"], "--max_train_samples is 0; expected at least 1"),
        (["--max_predict_samples", "3"], "--max_predict_samples 3 cuts the test split that --do_predict translates"),
        (["--max_eval_samples", "3"], "--max_eval_samples 3 cuts the validation split, and the data has none"),
    ],
    ids=["zero", "predict-without-do-predict", "eval-without-validation"],
)
def test_a_max_samples_flag_that_cannot_apply_is_refused(tmp_path, data, flags, fragment):
    line = error_line(quick_run(data, tmp_path / "run", "--max_steps", "1", *flags))
    assert fragment in line
    assert not (tmp_path / "run").exists()


def test_resuming_a_checkpoint_without_a_data_record_and_no_data_flags_names_the_embedded_task(tmp_path, finished):
    """A checkpoint from the Hub (whose data record is not pushed) or an older train.py cannot say its data."""
    output_dir = copy_of(finished, tmp_path)
    (output_dir / "checkpoint-4" / "data_args.json").unlink()
    resume = ["--output_dir", str(output_dir), "--max_steps", "5", "--resume_from_checkpoint", "last"]
    result = run_train(*TINY, *QUICK, *resume)
    assert result.returncode == 0, result.stderr[-3000:]
    warning = f"warning: {output_dir / 'checkpoint-4'} has no data_args.json to say what it was trained on, and no data"
    assert warning in result.stderr


def test_a_local_dataset_folder_is_recorded_where_any_working_directory_finds_it(tmp_path, monkeypatch):
    (tmp_path / "corpus").mkdir()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    record = data_record(DataArguments(dataset_name="corpus", source_lang="en", target_lang="de"))
    assert record["dataset_name"] == str(tmp_path / "corpus")
    assert (
        data_record(DataArguments(dataset_name="wmt16", source_lang="en", target_lang="de"))["dataset_name"] == "wmt16"
    )
    # A record that an older train.py wrote with the folder as given resumes on it here, given or not.
    (checkpoint / "data_args.json").write_text(json.dumps({**record, "dataset_name": "corpus"}))
    for given in (set(), {"dataset_name"}):
        data = DataArguments(dataset_name="corpus" if given else None, source_lang="en", target_lang="de")
        resume_data(data, given | {"source_lang", "target_lang"}, checkpoint)  # refused: a UsageError


def test_resume_refuses_a_dataset_folder_whose_training_split_changed(tmp_path):
    """As for --train_file: the train split's files of a local --dataset_name folder are recorded by their SHA-256."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    first = write_jsonl(corpus / "train-00000-of-00002.jsonl", range(1, 9))
    second = write_jsonl(corpus / "train-00001-of-00002.jsonl", range(9, 17))
    validation = write_jsonl(corpus / "validation.jsonl", range(20, 24))
    data = DataArguments(dataset_name=str(corpus), source_lang="en", target_lang="de")
    record = data_record(data)
    digests = "\n".join(hashlib.sha256(path.read_bytes()).hexdigest() for path in (first, second))
    assert record["train_file_sha256"] == hashlib.sha256(digests.encode()).hexdigest()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "data_args.json").write_text(json.dumps(record))
    given = {"dataset_name", "source_lang", "target_lang"}
    write_jsonl(validation, range(30, 34))  # evaluation data may change
    resume_data(DataArguments(dataset_name=str(corpus), source_lang="en", target_lang="de"), given, checkpoint)
    kept = second.read_bytes()
    write_jsonl(second, range(9, 16))  # one pair fewer in the second file
    for given_now in (given, set()):
        data = DataArguments(dataset_name=str(corpus) if given_now else None, source_lang="en", target_lang="de")
        with pytest.raises(UsageError) as refused:
            resume_data(data, given_now, checkpoint)
        named = "--dataset_name" if given_now else "the dataset"  # not given: the record's, no flag typed
        assert str(refused.value) == (
            f"the train split of {named} {corpus} ({first}, {second}) has changed since {checkpoint} was "
            "trained on it (its SHA-256 is not the one in data_args.json); put the data back as it was to resume, or "
            "train on the new data in a new run (another --output_dir)"
        )
    second.write_bytes(kept)
    resume_data(DataArguments(source_lang="en", target_lang="de"), set(), checkpoint)


def test_the_flags_suggested_for_an_output_dir_holding_a_model_work_as_written(tmp_path, finished, data):
    """Each flag the refusal names, added to the command as written, continues the run or replaces it."""
    output_dir = copy_of(finished, tmp_path)
    line = error_line(quick_run(data, output_dir, "--max_steps", "4"))
    replace, resume = line.split("; pass ")[1].removesuffix(" to continue it").split(" to replace it or ")
    assert (replace, resume) == ("--overwrite_output_dir", "--resume_from_checkpoint last")
    resumed = quick_run(data, output_dir, "--max_steps", "4", *shlex.split(resume))
    assert resumed.returncode == 0 and "completed the run (step 4 of 4)" in resumed.stdout, resumed.stderr[-3000:]
    replaced = quick_run(data, output_dir, "--max_steps", "1", *shlex.split(replace))
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 1


def test_resuming_a_checkpoint_from_elsewhere_checks_output_dir_as_a_new_run_does(tmp_path, finished, data):
    """--resume_from_checkpoint PATH outside output_dir starts that folder's run: a folder holding another model, or
    files the final save would replace, is refused as without the flag; a new folder takes the run."""
    elsewhere = ["--max_steps", "6", "--resume_from_checkpoint", str(finished / "checkpoint-4")]
    other = copy_of(finished, tmp_path / "other")
    before = snapshot(other)
    line = error_line(quick_run(data, other, *elsewhere))
    assert line.startswith(f"error: output_dir {other} already holds a model or checkpoints")
    assert snapshot(other) == before and sorted(path.name for path in other.glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("my notes\n")
    line = error_line(quick_run(data, notes, *elsewhere))
    assert "holds no model but files that the final save would replace: README.md" in line
    assert (notes / "README.md").read_text() == "my notes\n"
    result = quick_run(data, tmp_path / "new", *elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "new" / "trainer_state.json").read_text())["global_step"] == 6


def test_a_checkpoint_or_an_averaged_model_is_no_output_dir_even_with_overwrite(tmp_path, finished, data):
    """A model trained into a checkpoint would sit beside the run's optimizer and trainer state (a resume or an
    average would take it for the checkpoint), and one trained into an averaged folder beside its averaged_from.json
    (eval.py would take it for the average): both are refused, --overwrite_output_dir or not."""
    run = copy_of(finished, tmp_path)
    averaged = run / "averaged-last-2"
    shutil.copytree(run, averaged, ignore=shutil.ignore_patterns("checkpoint-*"))
    (averaged / "averaged_from.json").write_text(json.dumps({"run": str(run), "checkpoints": []}))
    cases = (
        (run / "checkpoint-2", f"is a checkpoint of the run in {run} (trainer_state.json)"),
        (averaged, "is an averaged model of eval.py (averaged_from.json)"),
    )
    for folder, kind in cases:
        before = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
        for overwrite in ([], ["--overwrite_output_dir", "true"]):
            line = error_line(quick_run(data, folder, "--max_steps", "1", *overwrite))
            assert line == f"error: output_dir {folder} {kind}; train into another --output_dir"
        assert {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()} == before


def test_resume_refuses_data_flags_that_differ_from_the_checkpoints_data(tmp_path, finished, data):
    output_dir = copy_of(finished, tmp_path)
    other = write_jsonl(tmp_path / "other.jsonl", range(100, 116))
    resume = ["--max_steps", "6", "--resume_from_checkpoint", "last"]
    swapped = ["--source_lang", "de", "--target_lang", "en"]
    line = error_line(
        run_train(*TINY, *QUICK, "--train_file", str(other), *swapped, "--output_dir", str(output_dir), *resume)
    )
    assert line.startswith(f"error: {output_dir / 'checkpoint-4'} was trained on other data (data_args.json in it)")
    assert f"--train_file {other} (the checkpoint's: {data})" in line
    assert "--source_lang de (the checkpoint's: en); --target_lang en (the checkpoint's: de)" in line
    line = error_line(quick_run(data, output_dir, *resume, "--max_target_length", "9"))
    assert "--max_target_length 9 (the checkpoint's: 256)" in line and "--train_file" not in line
    line = error_line(run_train(*TINY, *QUICK, *swapped, "--output_dir", str(output_dir), *resume))
    assert "--train_file" not in line and "--source_lang de" in line  # the data not given is the checkpoint's
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # A validation file only evaluates the run: it may change.
    result = quick_run(data, output_dir, *resume, "--validation_file", str(other))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((output_dir / "data_args.json").read_text())["validation_file"] == str(other)


def test_resume_refuses_a_training_file_whose_content_changed_since_the_checkpoint(tmp_path, data):
    """Trainer resumes by skipping the batches the epoch has trained: in other data, other pairs would be skipped."""
    train_file = tmp_path / "train.jsonl"
    shutil.copy(data, train_file)
    output_dir = tmp_path / "run"
    result = quick_run(train_file, output_dir, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    kept = train_file.read_bytes()
    write_jsonl(train_file, range(2, 18))  # the same path, 16 pairs again, one of them new
    resume = ["--max_steps", "4", "--resume_from_checkpoint", "last"]
    for given in ([], ["--train_file", str(train_file)]):
        line = error_line(run_train(*TINY, *QUICK, *given, "--output_dir", str(output_dir), *resume))
        named = "--train_file" if given else "the training file"  # not given: the record's, no flag typed
        assert line == (
            f"error: {named} {train_file} has changed since {output_dir / 'checkpoint-2'} was trained on it (its "
            "SHA-256 is not the one in data_args.json); put the data back as it was to resume, or train on the new "
            "data in a new run (another --output_dir)"
        )
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-2"]
    train_file.write_bytes(kept)
    result = run_train(*TINY, *QUICK, "--output_dir", str(output_dir), *resume)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        json.loads((output_dir / "data_args.json").read_text())["train_file_sha256"] == hashlib.sha256(kept).hexdigest()
    )


def test_a_checkpoint_records_its_own_runs_data_for_eval_py(tmp_path, finished):
    """A checkpoint of a run that overwrites a finished model is scored on its run's data, not the old model's."""
    output_dir = copy_of(finished, tmp_path)
    old = json.loads((output_dir / "data_args.json").read_text())
    (output_dir / "data_args.json").write_text(json.dumps({**old, "train_file": "/elsewhere/train.jsonl"}))
    assert model_data_record(output_dir / "checkpoint-4") == old


def test_model_card_describes_the_saved_shape_not_the_preset_asked_for(finished):
    card = (finished / "README.md").read_text()
    config = json.loads((finished / "config.json").read_text())
    assert config["d_model"] == 16
    assert "preset `tiny`" not in card  # tiny is d_model 64; TINY narrows it
    assert "a custom shape (d_model 16, num_heads 2, d_ff 32, encoder_layers 1, decoder_layers 2" in card


def test_model_records_the_data_it_was_trained_on(tmp_path, finished, data):
    record = json.loads((finished / "data_args.json").read_text())
    assert record == {
        "dataset_name": None,
        "dataset_config_name": None,
        "train_file": str(data),
        "validation_file": None,
        "test_file": None,
        "source_lang": "en",
        "target_lang": "de",
        "max_source_length": 256,
        "max_target_length": 256,
        "embedded_task": False,
        "max_train_samples": None,
        "train_file_sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
    }
    output_dir = tmp_path / "embedded"
    result = run_train(*TINY, *QUICK, "--max_steps", "1", "--max_target_length", "20", "--output_dir", str(output_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((output_dir / "data_args.json").read_text())
    assert (record["source_lang"], record["target_lang"], record["embedded_task"]) == ("en", "de", True)
    assert (record["train_file"], record["train_file_sha256"], record["max_target_length"]) == (None, None, 20)
