"""Training to a wall-clock budget: train.py's --max_train_seconds and --save_at_seconds, as one TrainerCallback.

A budget counts the seconds since this process's training began (evaluations and checkpoint saves included; a
resumed run counts again from zero).
"""

import shutil
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments

from vanilla_files import TRAINER_RESUME_FILES, write_folder_atomically


def model_at_folder(output_dir: str | Path, seconds: float) -> Path:
    """Where --save_at_seconds keeps the model: output_dir/model-at-<seconds>s, out of reach of checkpoint rotation."""
    return Path(output_dir) / f"model-at-{seconds:g}s"


def kept_models(output_dir: Path) -> list[Path]:
    """The models --save_at_seconds kept in output_dir, at any number of seconds."""
    return sorted(path for path in output_dir.glob("model-at-*s") if (path / "config.json").is_file())


def main_process_decides(args: TrainingArguments, *decisions: bool) -> tuple[bool, ...]:
    """The main process's decisions, taken by every process: clocks differ, and a rank stopping alone would hang."""
    if args.world_size <= 1:
        return decisions
    flags = torch.tensor(decisions, dtype=torch.int32, device=args.device)
    torch.distributed.broadcast(flags, src=0)
    return tuple(bool(flag) for flag in flags.tolist())


class TimeBudgetCallback(TrainerCallback):
    """Stops training after `max_seconds` (the epoch-end evaluation and checkpoint follow, as at any epoch's end);
    saves a checkpoint after `save_at_seconds` and keeps it as a model folder (model_at_folder)."""

    def __init__(self, max_seconds: float | None, save_at_seconds: float | None):
        self.max_seconds = max_seconds
        self.save_at_seconds = save_at_seconds
        self.start = time.monotonic()
        self.keep_next_save = False
        self.kept = False
        self.stopped_at = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()
        # A resumed run whose earlier part kept the model at these seconds keeps that one (a new run's output_dir
        # holds none: check_output_dir refuses a folder with a kept model, or --overwrite_output_dir removes it).
        self.kept = self.save_at_seconds is not None and model_at_folder(args.output_dir, self.save_at_seconds).exists()

    def on_step_end(self, args, state, control, **kwargs):
        elapsed = time.monotonic() - self.start
        keep = self.save_at_seconds is not None and not self.kept and elapsed >= self.save_at_seconds
        stop = self.max_seconds is not None and elapsed >= self.max_seconds
        keep, stop = main_process_decides(args, keep, stop)
        if keep:
            control.should_save = self.keep_next_save = True
        if stop:
            control.should_training_stop = True
            self.stopped_at = (elapsed, state.global_step, state.max_steps)
        return control

    def on_save(self, args, state, control, **kwargs):
        if not self.keep_next_save:
            return
        self.keep_next_save, self.kept = False, True
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            output = model_at_folder(args.output_dir, self.save_at_seconds)
            ignore = shutil.ignore_patterns(*TRAINER_RESUME_FILES)  # a model folder, not a checkpoint to resume
            write_folder_atomically(
                output, lambda folder: shutil.copytree(checkpoint, folder, ignore=ignore, dirs_exist_ok=True)
            )
            print(f"saved the model at {self.save_at_seconds:g} s of training (step {state.global_step}) to {output}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.stopped_at is not None and state.is_world_process_zero:
            elapsed, step, max_steps = self.stopped_at
            print(
                f"--max_train_seconds {self.max_seconds:g}: stopped after {elapsed:.1f} s at step {step} of {max_steps}"
            )


def time_budget_callbacks(args: TrainingArguments) -> list[TrainerCallback]:
    """The callback for --max_train_seconds / --save_at_seconds, or none when neither is given."""
    if args.max_train_seconds is None and args.save_at_seconds is None:
        return []
    return [TimeBudgetCallback(args.max_train_seconds, args.save_at_seconds)]
