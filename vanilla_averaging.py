"""Checkpoint averaging (sec. 6.1): the mean of a run's last N checkpoints, saved as a model of its own."""

import errno
import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from vanilla_cli import UsageError
from vanilla_ctranslate2 import is_cached_conversion
from vanilla_data_record import DATA_RECORD, TRAIN_FILE_DIGEST, TRAINING_DATA_KEYS, read_data_record
from vanilla_files import (
    AVERAGED_MARKER,
    check_writable,
    checkpoint_folders,
    complete_checkpoints,
    finish_gone_writes_in,
    hub_revision,
    lock_file,
    locked,
    read_json,
    sha256_of,
    share_lock,
    unlock_file,
    write_folder_atomically,
    write_text_atomically,
)
from vanilla_translation import load_model, load_model_and_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def check_averaged_model_dir(output: Path, named: str) -> None:
    """Only a new folder, or one holding an earlier averaged model (its AVERAGED_MARKER), is written; `named` names
    `output` in errors. Nothing is written into a revision of the Hub's cache (hub_revision): a run pushed with its
    checkpoints, averaged from there, gets its average elsewhere."""
    if hub_revision(output) is not None:
        raise UsageError(
            f"{named} {output} lies in a revision of the Hub's cache, which holds the Hub's files only: name a folder "
            "outside it with --averaged_model_dir"
        )
    if not output.exists():
        check_writable(output / AVERAGED_MARKER, named)
        return
    if not output.is_dir():
        raise UsageError(f"{named} {output} is a file; expected a new folder or an earlier averaged model")
    if not (output / AVERAGED_MARKER).is_file():
        raise UsageError(
            f"{named} {output} already exists and holds no averaged model written by eval.py (no "
            f"{AVERAGED_MARKER}); refusing to replace it: name a new folder with --averaged_model_dir"
        )
    check_writable(output.parent / AVERAGED_MARKER, named)


def check_nothing_else_in(output: Path, named: str) -> None:
    """An averaged folder is replaced only while it holds nothing but the model and the CTranslate2 conversions
    eval.py cached in it (checked under the exclusive lock: no conversion is under way then)."""
    if not output.is_dir():
        return
    finish_gone_writes_in(output)  # a conversion killed midway left a temporary folder: no reason to refuse
    folders = sorted(path.name for path in output.iterdir() if path.is_dir() and not is_cached_conversion(path))
    if folders:
        raise UsageError(
            f"{named} {output} holds folders besides an averaged model ({', '.join(folders)}); "
            "refusing to replace it: name a new folder"
        )


def reading_lock(folder: Path) -> Path:
    """The lock file beside an averaged folder: held shared to read the folder, exclusive to replace it."""
    return folder.parent / f".{folder.name}.lock"


def making_lock(folder: Path) -> Path:
    """The lock file beside an averaged folder that eval.py holds while it makes the average (or finds it made)."""
    return folder.parent / f".{folder.name}.making.lock"


@contextmanager
def average_checkpoints(run: Path, last: int, output: Path, named: str = "--averaged_model_dir") -> Iterator[Path]:
    """Sec. 6.1: "for the base models, we used a single model obtained by averaging the last 5 checkpoints".

    Writes the averaged model (with the newest checkpoint's config, tokenizer and generation config) to `output`,
    with AVERAGED_MARKER (the run and the checkpoints averaged) and the data record of the newest checkpoint (else
    of the run), and holds it for the block (reading_lock, shared): no other eval.py replaces it while the block
    scores it. An average of the same checkpoints there already is kept and read alongside its other readers; a new
    one waits for them to end. Another eval.py averaging into `output` is waited for (making_lock), then its average
    taken, or made anew if the checkpoints changed. `named` names `output` in errors: the flag given, or what it is.
    """
    if last < 1:
        raise UsageError(f"--average_last ({last}) must be a positive number of checkpoints")
    check_run_path(run, last)
    check_averaged_model_dir(output, named)
    output.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as held:
        # Averaging takes turns on a lock of its own, let go once the average is made or found: one of the same
        # checkpoints waits for it to be swapped in, not for its scoring too (an exclusive wait on the reading lock
        # would not end when its holder turns shared).
        with locked(making_lock(output), waiting_for=f"another eval.py averaging into {output}"):
            chosen, sources = checkpoints_to_average(run, last)
            current = is_average_of(output, sources)
            replacing = None if current else f"the eval.py runs reading {output} to end before replacing it"
            # Shared at once when current: only a holder of the making lock holds it exclusive.
            handle = held.enter_context(locked(reading_lock(output), shared=current, waiting_for=replacing))
            if not current:
                check_nothing_else_in(output, named)
                write_average(run, chosen, sources, output)
                share_lock(handle)  # others may read it now; none replaces it before the block ends
        yield output


def checkpoints_to_average(run: Path, last: int) -> tuple[list[Path], dict]:
    """The run's last `last` complete checkpoints (last_checkpoints) and the AVERAGED_MARKER of their average."""
    chosen = last_checkpoints(run, last)
    sources = {
        "run": str(run.resolve()),
        "checkpoints": [path.name for path in chosen],
        "sha256": {path.name: weight_digests(path) for path in chosen},
    }
    return chosen, sources


def is_average_of(output: Path, sources: dict) -> bool:
    """Whether `output` holds the average of `sources` already (a note says it is kept); a damaged marker: not. The
    checkpoints' names and weights decide: a run moved or renamed since keeps its average, the marker naming it anew."""
    recorded = read_json(output / AVERAGED_MARKER)
    if not isinstance(recorded, dict) or {**recorded, "run": sources["run"]} != sources:
        return False
    if recorded["run"] != sources["run"]:
        write_text_atomically(output / AVERAGED_MARKER, marker_text(sources))
    print(f"note: {output} holds the average of these checkpoints already: kept, with its reports", file=sys.stderr)
    return True


def marker_text(sources: dict) -> str:
    """The AVERAGED_MARKER's text: the run, the checkpoints averaged and their weights' SHA-256."""
    return json.dumps(sources, indent=2) + "\n"


@contextmanager
def reading_averaged_model(folder: Path) -> Iterator[None]:
    """Holds an averaged folder (one with AVERAGED_MARKER) for the block, its reading_lock shared: eval.py
    --average_last replaces it only once the block has read it. Any other folder or Hub id: nothing to hold."""
    if not (folder / AVERAGED_MARKER).is_file():
        yield
        return
    waiting_for = f"another eval.py averaging into {folder}"
    try:
        # Through the making lock, which a replacement holds while it waits for the readers to end: readers that
        # come after it wait for it (flock does not queue waiters, so overlapping readers would hold it off for good).
        with locked(making_lock(folder), shared=True, waiting_for=waiting_for):
            handle = lock_file(reading_lock(folder), shared=True, waiting_for=waiting_for)
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise
        handle = None  # nothing beside it can be written, the lock file neither: read as it is
    try:
        yield
    finally:
        if handle is not None:
            unlock_file(handle)


def check_run_path(run: Path, last: int) -> None:
    """Cheap checks of --average_last's run folder, before the data is read: one that exists, and not a checkpoint."""
    if not run.is_dir():
        raise UsageError(f"--average_last {last}: {run}: no such run folder")
    if run in checkpoint_folders(run.parent):
        raise UsageError(
            f"--average_last {last}: {run} is a checkpoint, not a run: pass the run folder that holds its "
            f"checkpoint-* folders ({run.parent})"
        )


def last_checkpoints(run: Path, last: int) -> list[Path]:
    """The run's last `last` complete checkpoints, oldest first; UsageError for too few, or for a tokenizer or training
    data that differ among them."""
    checkpoints = complete_checkpoints(run)
    if len(checkpoints) < last:
        incomplete = sorted(path.name for path in checkpoint_folders(run) if path not in checkpoints)
        skipped = f" (skipped, incomplete: {', '.join(incomplete)})" if incomplete else ""
        raise UsageError(f"--average_last {last}: {run} has {len(checkpoints)} complete checkpoint-* folders{skipped}")
    chosen = checkpoints[-last:]
    for checkpoint in chosen[:-1]:  # one run's checkpoints share the tokenizer and the training data
        for differ, same in (
            ("tokenizer.json", read_bytes(checkpoint / "tokenizer.json") == read_bytes(chosen[-1] / "tokenizer.json")),
            (f"training data ({DATA_RECORD})", training_data(checkpoint) == training_data(chosen[-1])),
        ):
            if not same:
                raise UsageError(f"cannot average {checkpoint} with {chosen[-1]}: their {differ} differ (two runs?)")
    return chosen


def write_average(run: Path, chosen: list[Path], sources: dict, output: Path) -> None:
    """The mean of the `chosen` checkpoints' weights, saved to `output` with `sources` as its AVERAGED_MARKER."""
    import torch

    model, tokenizer = load_model_and_tokenizer(str(chosen[-1]))
    # Sum in float64 so that averaging many checkpoints loses nothing to rounding.
    totals = {
        name: tensor.to(torch.float64, copy=True)
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point()
    }
    for checkpoint in chosen[:-1]:
        other = {
            name: tensor for name, tensor in load_model(checkpoint).state_dict().items() if tensor.is_floating_point()
        }
        unshared = sorted(set(other) ^ set(totals))
        if unshared:
            holder = checkpoint if unshared[0] in other else chosen[-1]
            raise UsageError(f"cannot average {checkpoint} with {chosen[-1]}: only {holder} has {unshared[0]}")
        for name, total in totals.items():
            if other[name].shape != total.shape:
                raise UsageError(
                    f"cannot average {checkpoint} with {chosen[-1]}: {name} has shape {tuple(other[name].shape)} "
                    f"against {tuple(total.shape)}; the checkpoints must be of one model"
                )
            total += other[name].to(total.device, torch.float64)
    state = model.state_dict()
    mean = {name: (total / len(chosen)).to(state[name].dtype) for name, total in totals.items()}
    model.load_state_dict(mean, strict=False)
    files = {AVERAGED_MARKER: marker_text(sources)}
    record = next((folder / DATA_RECORD for folder in (chosen[-1], run) if (folder / DATA_RECORD).is_file()), None)
    if record is not None:  # the checkpoints' own, else (checkpoints of an older train.py) the run's
        files[DATA_RECORD] = record.read_text(encoding="utf-8")
    save_model_atomically(model, tokenizer, output, files)


def read_bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def training_data(checkpoint: Path) -> dict | None:
    """What a checkpoint was trained on, from its data record (the validation and test files may change on resume)."""
    record = read_data_record(checkpoint)
    return None if record is None else {key: record.get(key) for key in (*TRAINING_DATA_KEYS, TRAIN_FILE_DIGEST)}


def weight_digests(checkpoint: Path) -> dict[str, str]:
    """SHA-256 of each weights file of a checkpoint: an averaged folder of the same checkpoints is not redone."""
    return {path.name: sha256_of(path) for path in sorted(checkpoint.glob("*.safetensors"))}


def save_model_atomically(
    model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", output: Path, files: dict[str, str]
) -> None:
    """save_pretrained (and `files`, name -> text) into a temporary folder beside `output`, then swap it in."""

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")

    try:
        write_folder_atomically(output, write)
    except OSError as error:
        raise UsageError(f"cannot write the averaged model to {output} ({error.strerror or error})") from None
