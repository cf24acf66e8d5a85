"""train.py's output_dir: one run at a time, refusing another model, resuming, the final save swapped in by renames."""

import errno
import filecmp
import functools
import os
import re
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import torch

from vanilla_cli import UsageError
from vanilla_files import (
    AVERAGED_MARKER,
    TRAINER_STATE,
    WEIGHT_FILES,
    LockHeld,
    checkpoint_folders,
    complete_checkpoints,
    damaged_file,
    holds_optimizer_state,
    is_model_folder_file,
    lock_file,
    missing_rng_states,
    newest_whole_checkpoint,
    probe_write,
    trainer_state,
    unlock_file,
    write_file_atomically,
)
from vanilla_hub import PREDICTIONS, REPORT_FILES, eval_reports
from vanilla_time_budget import kept_models
from vanilla_train_arguments import TrainingArguments

if TYPE_CHECKING:
    from vanilla_trainer import VanillaTrainer

# The lock files this process holds (train.py's output_dir), open for as long as it holds them.
HELD: dict[Path, TextIO] = {}

# The weight files that transformers writes into a model folder (SAFE_WEIGHTS_NAME, WEIGHTS_NAME, their shards and
# indexes) and Trainer's training_args.bin: with eval.py's reports of them, all that goes with a replaced model.
OWN_WEIGHTS = re.compile(
    r"model(-\d{5}-of-\d{5})?\.safetensors|pytorch_model(-\d{5}-of-\d{5})?\.bin"
    r"|(model\.safetensors|pytorch_model\.bin)\.index\.json|training_args\.bin"
)
# Named like weights or reports, whoever wrote them: a replaced model's files are among them, and a user's may be.
MODEL_LIKE = (*WEIGHT_FILES, *REPORT_FILES)
# What renaming a folder raises where the folder itself cannot move: a mount point (EBUSY, or EXDEV for a bind mount),
# a folder in a sticky-bit folder that another user owns (EPERM). The final save copies its files in instead.
UNMOVABLE = (errno.EBUSY, errno.EXDEV, errno.EPERM)


def fault_point(name: str) -> None:
    """Tests' fault injection: VANILLA_FAULT=<name> kills the process here, <name>:enospc fails as a full disk."""
    fault = os.environ.get("VANILLA_FAULT")
    if fault == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == f"{name}:enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def beside(output_dir: Path, role: str) -> Path:
    """The hidden sibling folder where the final save builds the new model ("saving") or parks the old ("replaced")."""
    output_dir = output_dir.resolve()
    return output_dir.with_name(f".{output_dir.name}.{role}")


def best_checkpoint(checkpoint: Path) -> Path | None:
    """The best checkpoint of the run as `checkpoint`'s trainer state names it (with --metric_for_best_model), if it
    is still beside it: the model a finished run saves with --load_best_model_at_end."""
    best = (trainer_state(checkpoint) or {}).get("best_model_checkpoint")
    if not isinstance(best, str):
        return None
    folder = checkpoint.parent / Path(best).name  # recorded as the run named its output_dir, maybe relative
    return folder if trainer_state(folder) is not None else None


def finished_with(output_dir: Path, checkpoint: Path) -> bool:
    """Whether output_dir holds the model a run that ended at `checkpoint` saves: its own, or its best checkpoint's."""
    best = best_checkpoint(checkpoint)
    return saved_from(output_dir, checkpoint) or (best is not None and saved_from(output_dir, best))


def saved_after(output_dir: Path, checkpoint: Path) -> bool:
    """Whether output_dir holds a model saved at a later step than `checkpoint`'s: the end of a run that stopped
    between checkpoints (--max_train_seconds), or saved none at its end (--save_at_seconds's alone)."""
    final, last = trainer_state(output_dir), trainer_state(checkpoint)
    exists = (output_dir / "config.json").is_file() and final is not None and last is not None
    return exists and final["global_step"] > last["global_step"]


def saved_from(output_dir: Path, checkpoint: Path) -> bool:
    """Whether output_dir holds the model of `checkpoint` (its weights; output_dir may hold a user's as well)."""
    weights = sorted(path.name for path in checkpoint.glob("*.safetensors"))
    return (
        (output_dir / "config.json").is_file()
        and bool(weights)
        and all(
            (output_dir / name).is_file() and filecmp.cmp(output_dir / name, checkpoint / name, shallow=False)
            for name in weights
        )
    )


def finish_interrupted_save(output_dir: Path) -> None:
    """Completes a final save that was killed while swapping folders or copying files in, or drops one killed before."""
    folder = output_dir.resolve()  # a symlink's target: the link itself stays
    staging, replaced = beside(folder, "saving"), beside(folder, "replaced")
    if beside(folder, "copying").exists():  # killed while copying the new model in: its files are all there
        finish_copying_in(folder)
        print(f"finished an interrupted save: {output_dir} holds the new model")
    if replaced.exists():
        if not folder.exists():  # killed between the two renames: the new model was complete
            staging.rename(folder)
        keep_entries_of_replaced(replaced, folder)
        print(f"finished an interrupted save: {output_dir} holds the new model")
    if staging.exists():  # killed while writing the new model: the old one (if any) is intact
        shutil.rmtree(staging)


def old_model_files(folder: Path) -> list[Path]:
    """The top-level files of the model in `folder` that go when a new model replaces it: its weights (OWN_WEIGHTS) and
    eval.py's reports of it (own_reports). A file of the same kind that train.py or eval.py did not write stays."""
    weights = [entry for entry in folder.iterdir() if entry.is_file() and OWN_WEIGHTS.fullmatch(entry.name)]
    return sorted([*weights, *own_reports(folder)])


def own_reports(folder: Path) -> list[Path]:
    """eval.py's reports in `folder` (eval_results_*.json that is_report recognises) and the predictions files they
    name; another tool's eval_results_*.json, and predictions_*.txt that no such report names, are not."""
    reports = eval_reports(folder)
    named = {Path(str(report.get("predictions_file", ""))).name for report in reports.values()}
    predictions = [path for path in folder.glob(PREDICTIONS) if path.is_file() and path.name in named]
    return sorted([*reports, *predictions])


def keep_entries_of_replaced(replaced: Path, output_dir: Path) -> None:
    """Moves what is not the old model (checkpoints, logs, other files) from `replaced` into output_dir; drops it."""
    old = old_model_files(replaced)
    for entry in sorted(replaced.iterdir()):
        if entry not in old and not (output_dir / entry.name).exists():
            entry.rename(output_dir / entry.name)
    shutil.rmtree(replaced)


def hold_output_dir(output_dir: Path) -> None:
    """Takes output_dir for this process (an flock on `.<name>.lock` beside it, lock_file): a second train.py into
    the same folder, which would write its checkpoints among this run's or remove its final save half-way, stops
    instead. release_output_dir gives it up and removes the file."""
    lock_path = beside(output_dir, "lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        HELD[lock_path] = lock_file(lock_path, wait=False)
    except LockHeld as held:
        raise UsageError(
            f"output_dir {output_dir} is in use by another train.py run"
            + (f" (process {held})" if str(held) else "")
            + "; wait for it to end, or choose another --output_dir"
        ) from None
    except OSError as error:
        raise UsageError(f"output_dir {output_dir} cannot be written: {error.filename}: {error.strerror}") from None


def release_output_dir(output_dir: Path) -> None:
    """Gives output_dir up (if this process holds it)."""
    handle = HELD.pop(beside(output_dir, "lock"), None)
    if handle is not None:
        unlock_file(handle)


def remove_if_empty(folder: Path) -> None:
    """Removes `folder` if it holds nothing (rmdir removes only an empty folder)."""
    try:
        folder.rmdir()
    except OSError:
        pass


def check_output_dir(args: TrainingArguments) -> str | None:
    """Holds output_dir, then refuses one holding another model or an unfinished run; returns the checkpoint to
    resume, if any.

    Of several processes, the main one holds the folder and decides (and finishes or removes what it must); the
    others take its answer. main() gives the folder up with release_output_dir when the run ends."""
    answer = [None]
    if args.process_index == 0:
        try:
            hold_output_dir(Path(args.output_dir))
            answer = [("checkpoint", prepare_output_dir(args))]
        except UsageError as error:
            answer = [("error", str(error))]
    if args.world_size > 1:
        torch.distributed.broadcast_object_list(answer, src=0)
    kind, value = answer[0]
    if kind == "error":
        raise UsageError(value)
    return value


def prepare_output_dir(args: TrainingArguments) -> str | None:
    """check_output_dir in the main process.

    Resuming never deletes anything. --overwrite_output_dir only replaces a finished model: it removes that model's
    checkpoints and averaged models once the data is read (remove_replaced_run), and the model itself when the new one
    is saved."""
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"output_dir {output_dir} is a file, expected a folder")
    finish_interrupted_save(output_dir)
    checkpoint = args.resume_from_checkpoint
    if checkpoint is not None:
        if checkpoint.lower() in ("true", "last"):
            newest = last_checkpoint(output_dir)
            check_continuable(newest)
            return str(newest)
        check_resumable(Path(checkpoint))
        check_continuable(Path(checkpoint))
        if continues_in_place(checkpoint, output_dir):
            return checkpoint
        # A checkpoint from elsewhere starts this folder's run: output_dir is checked as for a new run.
    if not output_dir.is_dir():
        return checkpoint
    # Another kind of model folder: a new model in it would be taken for what it was (eval.py's averaging reuses a
    # folder by its marker; a resume or an average takes a checkpoint by its trainer state).
    if (output_dir / AVERAGED_MARKER).exists():
        kind = f"an averaged model of eval.py ({AVERAGED_MARKER})"
    elif output_dir in checkpoint_folders(output_dir.parent) and (output_dir / TRAINER_STATE).exists():
        kind = f"a checkpoint of the run in {output_dir.parent} ({TRAINER_STATE})"
    else:
        kind = None
    if kind is not None:
        raise UsageError(f"output_dir {output_dir} is {kind}; train into another --output_dir")
    checkpoints = checkpoint_folders(output_dir)
    held = (output_dir / "config.json").exists() or checkpoints or kept_models(output_dir)
    if held and not args.overwrite_output_dir:
        raise UsageError(
            f"output_dir {output_dir} already holds a model or checkpoints (or a model kept by --save_at_seconds); "
            "pass --overwrite_output_dir to replace it or --resume_from_checkpoint last to continue it"
        )
    newest = checkpoints[-1] if checkpoints else None
    finished = newest is not None and (finished_with(output_dir, newest) or saved_after(output_dir, newest))
    if newest is not None and (trainer_state(newest) is None or not finished):
        raise UsageError(
            f"output_dir {output_dir} holds the checkpoints of an unfinished run (the newest: {checkpoints[-1].name}), "
            "and --overwrite_output_dir only replaces a finished model: continue the run with "
            "--resume_from_checkpoint last, or move the checkpoints away"
        )
    if not held:
        replaced = files_the_final_save_replaces(output_dir)
        if replaced:
            raise UsageError(
                f"output_dir {output_dir} holds no model but files that the final save would replace: "
                f"{', '.join(replaced)}; move them away, or choose another --output_dir"
            )
    else:
        stale = ", ".join(path.name for path in replaced_run_folders(output_dir))
        reports = ", ".join(path.name for path in own_reports(output_dir))
        others = ", ".join(not_the_models(output_dir))
        print(
            f"--overwrite_output_dir: replacing the finished model in {output_dir} when the new one is saved (the "
            "old one stays until then)"
            + (f"; removing its {stale} once the data is read" if stale else "")
            + (f"; its reports {reports} go with it" if reports else "")
            + (f"; {others} stay (train.py and eval.py did not write them)" if others else "")
        )
    return checkpoint


def last_checkpoint(output_dir: Path) -> Path:
    """`--resume_from_checkpoint last`: output_dir's newest checkpoint that is complete and whole (damaged ones are
    named in a warning and passed over); UsageError if it has none."""
    found = newest_whole_checkpoint(output_dir) if output_dir.is_dir() else None
    if found is None:
        raise UsageError(f"--resume_from_checkpoint: no complete checkpoint-* folder in {output_dir}")
    return found


def check_resumable(checkpoint: Path) -> None:
    """UsageError for a checkpoint given to --resume_from_checkpoint that Trainer could not load: one saved only in
    part, or with a file cut short or damaged (each read to the end), naming the file and what to resume from; and
    for a path that is no folder (a typo), which has nothing beside it to name."""
    if not checkpoint.is_dir():
        what = "is a file" if checkpoint.exists() else "does not exist"
        raise UsageError(
            f"--resume_from_checkpoint {checkpoint} {what}; expected a checkpoint-* folder, or last (the newest "
            "complete checkpoint in --output_dir)"
        )
    if trainer_state(checkpoint) is None:
        problem = f"{checkpoint} is not a complete checkpoint (no readable {TRAINER_STATE}, which Trainer writes last)"
    elif missing := missing_rng_states(checkpoint):
        problem = f"{checkpoint} is not a complete checkpoint (no {missing[0]}: a process stopped while saving it)"
    elif (damaged := damaged_file(checkpoint, read_all=True)) is not None:
        problem = f"{damaged} is cut short or damaged"
    else:
        return
    raise UsageError(f"--resume_from_checkpoint: {problem}; {resume_instead(checkpoint)}")


def check_continuable(checkpoint: Path) -> None:
    """UsageError for a checkpoint without optimizer and scheduler state (saved with --save_only_model, or a model
    folder such as --save_at_seconds' model): Trainer would continue from it with a new optimizer and the
    learning-rate schedule started over (its warmup again), a run that differs from the one it resumes."""
    if not holds_optimizer_state(checkpoint):
        raise UsageError(
            f"--resume_from_checkpoint: {checkpoint} holds no optimizer or scheduler state (a checkpoint saved with "
            "--save_only_model holds the model alone), and a run cannot continue from it: Trainer would start a new "
            "optimizer and the learning-rate schedule from step 0; resume from a checkpoint that holds them, or "
            "train anew"
        )


def resume_instead(checkpoint: Path) -> str:
    """What to do in place of resuming from a damaged `checkpoint`: resume from the newest complete checkpoint beside
    it, or, with none, train from the start."""
    others = [path for path in complete_checkpoints(checkpoint.parent, warn=False) if path != checkpoint]
    if others:
        return f"resume from {others[-1]}"
    return f"no other checkpoint beside it is complete: move {checkpoint} away to train from the start"


def continues_in_place(checkpoint: str | None, output_dir: Path) -> bool:
    """Whether a run resumes from a checkpoint of its own output_dir (one from elsewhere starts a run there)."""
    return checkpoint is not None and Path(checkpoint).resolve().parent == output_dir.resolve()


def replaced_run_folders(output_dir: Path) -> list[Path]:
    """The checkpoints, averaged models and kept models of the finished model that --overwrite_output_dir replaces."""
    averaged = [path for path in output_dir.glob("averaged-last-*") if (path / AVERAGED_MARKER).is_file()]
    return checkpoint_folders(output_dir) + averaged + kept_models(output_dir)


def remove_replaced_run(args: TrainingArguments, checkpoint: str | None) -> None:
    """--overwrite_output_dir over a finished model (check_output_dir has checked it): its checkpoints and averaged
    models go once the new run's data has been read, so that bad data or Ctrl-C before then leaves them."""
    output_dir = Path(args.output_dir)
    replacing = args.overwrite_output_dir and not continues_in_place(checkpoint, output_dir)
    if replacing and args.process_index == 0 and output_dir.is_dir():
        for path in replaced_run_folders(output_dir):
            shutil.rmtree(path)


def files_the_final_save_replaces(output_dir: Path) -> list[str]:
    """The top-level files of output_dir named like a model folder's, its weights' or its reports' (whoever wrote them):
    a final save into a folder holding no model would replace them by name, or leave them to be taken for its own."""
    return sorted(
        entry.name
        for entry in output_dir.iterdir()
        if entry.is_file() and (is_model_folder_file(entry) or any(entry.match(name) for name in MODEL_LIKE))
    )


def not_the_models(output_dir: Path) -> list[str]:
    """The top-level files of output_dir named like weights or reports (MODEL_LIKE) that are not the old model's."""
    old = old_model_files(output_dir)
    return sorted(
        entry.name
        for entry in output_dir.iterdir()
        if entry.is_file() and any(entry.match(name) for name in MODEL_LIKE) and entry not in old
    )


def check_output_dir_writable(output_dir: Path) -> None:
    """Fails before training, not after, when output_dir or the folder beside it (for the final save) is unwritable."""
    output_dir = output_dir.resolve()
    for folder in dict.fromkeys((output_dir, output_dir.parent)):
        try:
            probe_write(folder)
        except OSError as error:
            raise UsageError(f"output_dir {output_dir} cannot be written: {error.filename}: {error.strerror}") from None


def save_final_model(trainer: "VanillaTrainer", files: dict[str, str], state_source: Path | None = None) -> None:
    """Builds the model (and `files`: name -> text) in a sibling folder, then swaps it for output_dir's by renames.

    A reader sees the old model or the new one, never a mix (where output_dir cannot be renamed, swap_in replaces its
    files one by one, each whole). Every entry of output_dir that is not the old model (checkpoints, logs, averaged
    models, other files) stays with the new one; `finish_interrupted_save` completes a swap that was killed.
    trainer_state.json (the run's log) is the Trainer's, or a copy of `state_source`'s."""
    output_dir = Path(trainer.args.output_dir)
    staging = beside(output_dir, "saving")
    try:
        if trainer.is_world_process_zero() and staging.exists():
            shutil.rmtree(staging)
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(staging))  # every process takes part; the main one writes
        if trainer.is_world_process_zero():
            for name, text in files.items():
                (staging / name).write_text(text, encoding="utf-8")
            if state_source is None:
                trainer.state.save_to_json(str(staging / TRAINER_STATE))
            else:
                shutil.copyfile(state_source / TRAINER_STATE, staging / TRAINER_STATE)
            fault_point("final-save")
    except BaseException:
        if trainer.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)  # the old model, untouched, stays
        raise
    if trainer.is_world_process_zero():
        swap_in(output_dir)
    trainer.accelerator.wait_for_everyone()


def swap_in(output_dir: Path) -> None:
    """Puts the model built in `.<name>.saving` into output_dir (a symlink's target): the folder swapped by two
    renames, or, where it cannot move (a mount point, the working directory), the files copied in (copy_in)."""
    folder = output_dir.resolve()
    staging, replaced = beside(folder, "saving"), beside(folder, "replaced")
    if folder.exists():
        if os.path.ismount(folder) or folder == Path.cwd():  # renamed, the shell's folder would be the removed one
            copy_in(folder)
            return
        try:
            folder.rename(replaced)
        except OSError as error:
            if error.errno not in UNMOVABLE:
                raise
            copy_in(folder)
            return
        fault_point("final-swap")
    staging.rename(folder)
    fault_point("final-swapped")
    if replaced.exists():
        keep_entries_of_replaced(replaced, folder)


def copy_in(folder: Path) -> None:
    """Copies the model built in `.<name>.saving` into `folder` file by file, each atomically; the staging folder,
    renamed `.<name>.copying` first, tells a later start (finish_interrupted_save) to complete a copy cut short."""
    beside(folder, "saving").rename(beside(folder, "copying"))
    finish_copying_in(folder)


def finish_copying_in(folder: Path) -> None:
    """Copies every file of `.<name>.copying` into `folder`, removes the old model's files the new one lacks, and
    drops the copying folder; run again after a kill, it does the same."""
    copying = beside(folder, "copying")
    new = sorted(copying.iterdir())
    for entry in new:
        write_file_atomically(folder / entry.name, functools.partial(shutil.copyfile, entry))
        fault_point("final-copy")
    names = {entry.name for entry in new}
    for path in old_model_files(folder):
        if path.name not in names:
            path.unlink()
    shutil.rmtree(copying)


def last_checkpoint_phrase(output_dir: Path) -> str:
    checkpoints = complete_checkpoints(output_dir) if output_dir.is_dir() else []
    if not checkpoints:
        return "there is no checkpoint to resume from"
    return f"the last checkpoint is {checkpoints[-1]} (continue with --resume_from_checkpoint last)"


def remove_partial_checkpoint(trainer: "VanillaTrainer") -> str:
    """Removes the checkpoint a failure cut short, so that `--resume_from_checkpoint last` never picks it."""
    partial = Path(trainer.args.output_dir) / f"checkpoint-{trainer.state.global_step}"
    if trainer.is_world_process_zero() and partial.is_dir() and trainer_state(partial) is None:
        shutil.rmtree(partial, ignore_errors=True)
        return f"removed the partial {partial.name}; "
    return ""
