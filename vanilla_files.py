"""Files written atomically, and the checkpoints Trainer writes into a run folder."""

import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import struct
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from vanilla_cli import UsageError, compression_of, content_blocks

TRAINER_STATE = "trainer_state.json"  # the last file Trainer writes into a checkpoint-<step> folder
AVERAGED_MARKER = "averaged_from.json"  # in every averaged-last-N folder eval.py makes: the run and checkpoints
CARD = "README.md"  # a model folder's model card
DATA_RECORD = "data_args.json"  # in a model folder: the data train.py trained it on, eval.py's defaults
BATCHING_RECORD = "batching.json"  # in each checkpoint: what cut the run's epochs into batches
LOSS_TOTAL = "loss_total.json"  # in each checkpoint: the training loss summed over every step so far
# What Trainer writes into a checkpoint for resuming alone: optimizer, scheduler, grad scaler and RNG states.
TRAINER_RESUME_FILES = ("optimizer.*", "scheduler.pt", "scaler.pt", "rng_state*.pth")
# A checkpoint's resume state: Trainer's, its log, and train.py's loss sum and batching.
RESUME_FILES = (*TRAINER_RESUME_FILES, TRAINER_STATE, LOSS_TOTAL, BATCHING_RECORD)
# The top-level files of a model folder that train.py's final save writes: the weights, config, code, tokenizer, card
# and records. No output of eval.py takes the place of one, nor does a final save into a folder that holds no model.
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin")  # and training_args.bin
MODEL_FOLDER_FILES = (
    *WEIGHT_FILES,
    "config.json",
    "generation_config.json",
    "configuration_vanilla.py",
    "modeling_vanilla.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    TRAINER_STATE,
    CARD,
    DATA_RECORD,
    "all_results.json",
)


def is_model_folder_file(path: Path) -> bool:
    return any(path.match(name) for name in MODEL_FOLDER_FILES)


def is_resume_file(path: Path) -> bool:
    return any(path.match(name) for name in RESUME_FILES)


def check_output_files(outputs: dict[str, Path], inputs: dict[str, str | None]) -> None:
    """UsageError for an output file (flag -> path) that would overwrite an input file (flag -> path or None), another
    output, or a file of a model folder (one holding config.json) that the model is made of (MODEL_FOLDER_FILES) or
    that a checkpoint resumes from (RESUME_FILES), or that would lie in a revision of the Hub's cache (hub_revision)."""
    taken = {Path(path).resolve(): flag for flag, path in inputs.items() if path}
    for flag, path in outputs.items():
        resolved = path.resolve()
        if hub_revision(resolved.parent) is not None:
            raise UsageError(
                f"{flag} {path} lies in a revision of the Hub's cache, which holds the Hub's files only: name a file "
                "outside it"
            )
        if resolved in taken:
            raise UsageError(f"{flag} {path} is also the {taken[resolved]}: name another file")
        if is_model_folder_file(resolved) and (resolved.parent / "config.json").is_file():
            raise UsageError(f"{flag} {path} is a file of the model in {path.parent}: name another file")
        if is_resume_file(resolved) and (resolved.parent / "config.json").is_file():
            raise UsageError(f"{flag} {path} is a file the checkpoint in {path.parent} resumes from: name another file")
        taken[resolved] = flag


def probe_write(path: Path) -> Path:
    """The nearest existing folder at or above `path`, after a real write into it: permission bits do not stop root, a
    read-only file system does. OSError (its filename that folder) when it is a file or cannot be written."""
    folder = next(folder for folder in (path, *path.parents) if folder.exists())
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=folder))
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(folder)) from None
    return folder


def sha256_of(path: Path, decompressed: bool = False) -> str:
    """The SHA-256 of a file's content, read a megabyte at a time (`decompressed`: of the text a compressed data file
    holds, COMPRESSIONS, which reads it whole or names it as damaged); once per process while the file stays as it
    was."""
    status = Path(path).stat()
    compression = compression_of(path) if decompressed else None
    # By the name given, not a link's target's: its suffix says how to read it, and an error names it.
    return file_sha256(os.path.abspath(path), status.st_ino, status.st_size, status.st_mtime_ns, compression)


@functools.lru_cache(maxsize=64)
def file_sha256(path: str, inode: int, size: int, modified_ns: int, compression: str | None = None) -> str:
    """sha256_of, remembered by the file's identity, size and modification time."""
    digest = hashlib.sha256()
    for block in content_blocks(path, compression):
        digest.update(block)
    return digest.hexdigest()


class LockHeld(Exception):
    """Another process holds the lock file; the message names it (process id and host), as it wrote them in."""


def lock_file(path: Path, wait: bool = True, shared: bool = False, waiting_for: str | None = None) -> TextIO:
    """An flock on the file `path` (created if missing), exclusive (this process's id and host written in) or `shared`
    with other shared holders: the open handle, which holds it until unlock_file. Held by another process in a way
    that excludes this one: wait for it (saying so on stderr once, as "note: waiting for `waiting_for`", if given),
    or raise LockHeld (wait False).

    The kernel drops the lock when the process ends, however it ends. The last holder removes the file before it lets
    go (unlock_file), so a process that waited on a removed file locks the one now there instead."""
    operation = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    told = False
    while True:
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, operation | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                handle.seek(0)
                holder = handle.read().strip()
                handle.close()
                raise LockHeld(holder) from None
            if waiting_for and not told:
                print(f"note: waiting for {waiting_for}", file=sys.stderr)
                told = True
            fcntl.flock(handle, operation)
        try:
            if os.path.samestat(os.fstat(handle.fileno()), path.stat()):
                break
        except FileNotFoundError:
            pass
        handle.close()
    if not shared:
        handle.truncate(0)
        handle.write(f"{os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
    return handle


def share_lock(handle: TextIO) -> None:
    """Turns an exclusive lock_file into a shared one: other shared holders may come in, an exclusive one may not."""
    fcntl.flock(handle, fcntl.LOCK_SH)


def unlock_file(handle: TextIO) -> None:
    """Gives up a lock_file: the last holder removes the file while it still holds it, then closes it."""
    try:
        # Exclusive at once only when no other process holds it (a failed attempt gives up this one's shared lock).
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()  # others hold it shared: the last of them removes it
        return
    Path(handle.name).unlink(missing_ok=True)
    handle.close()


@contextmanager
def locked(path: Path, shared: bool = False, waiting_for: str | None = None) -> Iterator[TextIO]:
    """Holds the lock file `path` for the block, exclusive or `shared`, waiting for the processes it excludes
    (lock_file); the block gets the handle."""
    handle = lock_file(path, shared=shared, waiting_for=waiting_for)
    try:
        yield handle
    finally:
        unlock_file(handle)


def write_file_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """write(temporary) into a file beside `path` with its suffix, then rename it over `path`: readers see the old file
    or the whole new one, and a failure (a UsageError naming the file) leaves no temporary file."""
    if is_stream(path):  # /dev/stdout, a named pipe, `>(gzip > out.gz)`: written as it goes, never replaced
        try:
            write(path)
        except OSError as error:
            raise UsageError(f"cannot write {path} ({error.strerror or error})") from None
        return
    descriptor = open_descriptor(path)
    if descriptor is not None:  # /dev/stdout redirected to a file: written through it, never replaced nor truncated
        with tempfile.TemporaryDirectory() as scratch:
            try:
                write(Path(scratch) / f"output{path.suffix}")
                sys.stdout.flush()
                sys.stderr.flush()
                with open(os.dup(descriptor), "wb") as target:  # the descriptor's own offset, after what it wrote
                    target.write((Path(scratch) / f"output{path.suffix}").read_bytes())
            except OSError as error:
                raise UsageError(f"cannot write {path} ({error.strerror or error})") from None
        return
    temporary = own_sibling(path, path.stem, "tmp", path.suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for left, _ in left_by_gone_processes(path, path.stem, path.suffix):
            left.unlink(missing_ok=True)
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:
        raise UsageError(f"cannot write {path} ({error.strerror or error})") from None
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    """`text` as the UTF-8 content of `path`, written atomically (write_file_atomically)."""
    write_file_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def own_sibling(path: Path, name: str, role: str, suffix: str = "") -> Path:
    """`.<name>.<host>.<pid>.<role><suffix>` beside `path`: where this process writes it before the rename."""
    return path.with_name(f".{name}.{socket.gethostname()}.{os.getpid()}.{role}{suffix}")


def left_by_gone_processes(path: Path, name: str, suffix: str = "") -> list[tuple[Path, str]]:
    """The own_sibling entries (with their role) that processes of this machine left beside `path` and that no longer
    run: killed in the middle of a write. Another machine's, or a running process', are not theirs to remove."""
    pattern = re.compile(
        rf"\.{re.escape(name)}\.{re.escape(socket.gethostname())}\.(\d+)\.(tmp|old){re.escape(suffix)}"
    )
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    left = []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and not process_runs(int(match.group(1))):
            left.append((entry, match.group(2)))
    return left


def process_runs(pid: int) -> bool:
    """Whether process `pid` runs on this machine (a reused pid counts as running: nothing is removed for it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def finish_gone_writes(output: Path) -> None:
    """Cleans up after writes of `output` by processes killed midway: a killed swap whose old folder was moved aside
    before the new one came in gets the old one back; temporary folders are removed."""
    left = left_by_gone_processes(output, output.name)
    for entry, role in sorted(left, key=lambda item: item[1] != "old"):  # an old folder first: put back or dropped
        if role == "old" and not output.exists():
            os.replace(entry, output)
        else:
            shutil.rmtree(entry, ignore_errors=True)


def finish_gone_writes_in(folder: Path) -> None:
    """finish_gone_writes for every output inside `folder` that a killed process left a temporary entry for."""
    pattern = re.compile(rf"\.(.+)\.{re.escape(socket.gethostname())}\.\d+\.(tmp|old)")
    names = {
        match.group(1) for entry in folder.iterdir() if (match := pattern.fullmatch(entry.name)) and entry.is_dir()
    }
    for name in sorted(names):
        finish_gone_writes(folder / name)


def write_folder_atomically(output: Path, write: Callable[[Path], None]) -> None:
    """write(folder) into a temporary folder beside `output`, then swap it in: readers see the old or the new folder,
    and a failure puts the old one back and leaves no temporary folder (nor, on the next write, a killed one)."""
    temporary = own_sibling(output, output.name, "tmp")
    previous = own_sibling(output, output.name, "old")
    shutil.rmtree(temporary, ignore_errors=True)
    finish_gone_writes(output)
    try:
        temporary.mkdir(parents=True)
        write(temporary)
        if output.exists():
            os.replace(output, previous)
        os.replace(temporary, output)
    except BaseException:
        if previous.exists() and not output.exists():
            os.replace(previous, output)
        raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)


def output_path(given: str | None, model: str, default_name: str) -> Path:
    """The file the user named, else `default_name` in the model folder (or the current folder for a Hub id, and for
    a folder of a revision in the Hub's cache, which holds the Hub's files only)."""
    if given:
        return Path(given)
    folder = Path(model)
    return (folder if folder.is_dir() and hub_revision(folder) is None else Path.cwd()) / default_name


def hub_revision(folder: Path) -> Path | None:
    """The revision folder of huggingface_hub's cache, `models--org--name/snapshots/<commit>`, that `folder` is (or
    links to) or lies in (a checkpoint pushed with it), else None: its files are links into the cache's blobs, and a
    file written among them would pass for one of the revision's."""
    for snapshot in (folder.resolve(), *folder.resolve().parents):
        if snapshot.parent.name == "snapshots" and snapshot.parent.parent.name.startswith("models--"):
            return snapshot
    return None


def output_label(flag: str, given: str | None) -> str:
    """How errors name an output file: by its flag where the user gave it, else as that flag's default (output_path)."""
    return flag if given else f"{flag}'s default"


def is_stream(path: Path) -> bool:
    """Whether `path` is there and neither a file nor a folder: a terminal, a pipe, a device."""
    return path.exists() and not path.is_file() and not path.is_dir()


def open_descriptor(path: Path) -> int | None:
    """The descriptor number when `path` names one of this process's open files (/dev/stdout, /dev/fd/N,
    /proc/self/fd/N), else None. Opening such a path opens the file again, at its start: written through the
    descriptor, it goes after what the process already wrote there."""
    descriptors = Path(f"/proc/{os.getpid()}/fd")
    try:
        if path.parent.resolve() != descriptors and path.is_symlink():
            path = path.parent / os.readlink(path)
        if path.parent.resolve() == descriptors and path.name.isdigit():
            return int(path.name)
    except OSError:
        pass
    return None


def check_writable(path: Path, what: str) -> None:
    """UsageError unless a file `path` can be written: not a folder, and its folder (or the nearest existing folder
    above it) takes a real write (probe_write); a stream (is_stream) or an open file (open_descriptor), if it may be
    opened for writing."""
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder; expected a file name")
    if is_stream(path) or open_descriptor(path) is not None:
        if not os.access(path, os.W_OK):
            raise UsageError(f"{what} {path}: cannot write to it")
        return
    try:
        probe_write(path.parent)
    except NotADirectoryError as error:
        raise UsageError(f"{what} {path}: {error.filename} is a file, not a folder") from None
    except OSError as error:
        raise UsageError(f"{what} {path}: cannot write into {error.filename} ({error.strerror or error})") from None


def checkpoint_folders(run: Path) -> list[Path]:
    """The checkpoint-<step> folders Trainer writes into a run folder, complete or not, oldest first."""
    folders = [path for path in run.glob("checkpoint-*") if path.is_dir() and path.name.split("-")[-1].isdigit()]
    return sorted(folders, key=lambda path: int(path.name.split("-")[-1]))


def read_json(path: Path) -> object | None:
    """The JSON a file of this project's holds; None when it is missing or damaged (cut short, edited by hand)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def trainer_state(folder: Path) -> dict | None:
    """A folder's trainer_state.json; None when it is missing or cut short (the save was killed or the disk full)."""
    state = read_json(Path(folder) / TRAINER_STATE)
    return state if isinstance(state, dict) and isinstance(state.get("global_step"), int) else None


def complete_checkpoints(run: Path, warn: bool = True) -> list[Path]:
    """The checkpoints of a run that were saved to the end and are whole, oldest first; with `warn`, the others are
    named in a warning."""
    complete = []
    for folder in checkpoint_folders(run):
        missing = missing_rng_states(folder)
        if trainer_state(folder) is None:
            skipped = f"an incomplete checkpoint (no readable {TRAINER_STATE})"
        elif missing:
            beside = "which a process writes beside the main one's trainer state"
            skipped = f"an incomplete checkpoint (no {missing[0]}, {beside})"
        elif (damaged := damaged_file(folder)) is not None:
            skipped = f"its {damaged.name} is cut short or damaged"
        else:
            complete.append(folder)
            continue
        if warn:
            print(f"warning: skipping {folder}: {skipped}", file=sys.stderr)
    return complete


def missing_rng_states(folder: Path) -> list[str]:
    """The random-number states of a checkpoint saved by several processes (its BATCHING_RECORD counts them) that
    are not in it: each process writes its own, and the main one may write its trainer state before another's."""
    record = read_json(folder / BATCHING_RECORD)
    processes = record.get("processes", 1) if isinstance(record, dict) else 1
    names = [f"rng_state_{rank}.pth" for rank in range(processes)] if processes > 1 else []
    return [name for name in names if not (folder / name).is_file()]


def holds_optimizer_state(folder: Path) -> bool:
    """Whether a checkpoint holds the optimizer and scheduler states a run continues from (Trainer's optimizer file,
    or folder of shards, and scheduler.pt); one saved with --save_only_model holds the model alone."""
    return (folder / "scheduler.pt").is_file() and any(folder.glob("optimizer*"))


def newest_whole_checkpoint(run: Path) -> Path | None:
    """The newest of a run's complete checkpoints whose files read whole to the end (damaged_file with `read_all`),
    the one a resume loads; a newer one that does not is named in a warning and passed over."""
    for folder in reversed(complete_checkpoints(run)):
        damaged = damaged_file(folder, read_all=True)
        if damaged is None:
            return folder
        print(f"warning: skipping {folder}: its {damaged.name} is cut short or damaged", file=sys.stderr)
    return None


def damaged_file(folder: Path, read_all: bool = False) -> Path | None:
    """The first file of a checkpoint or model folder that is cut short or unreadable, None if none is: by checks that
    read little (a torch file's zip directory, a safetensors file's size against its header, JSON that parses), and
    with `read_all` by every torch file's checksums too (damage that keeps the size, which torch.load does not see)."""
    for path in sorted(folder.iterdir()):
        if path.suffix in (".pt", ".pth", ".bin") and path.is_file():
            whole = torch_file_is_whole(path) if read_all else zipfile.is_zipfile(path)
        elif path.suffix == ".safetensors" and path.is_file():
            whole = safetensors_is_whole(path)
        elif path.suffix == ".json" and path.is_file():
            whole = read_json(path) is not None
        else:
            continue
        if not whole:
            return path
    return None


def torch_file_is_whole(path: Path) -> bool:
    """Whether every record of a torch.save file (a zip archive) reads back with the CRC-32 written beside it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, EOFError, OSError):
        return False


def safetensors_is_whole(path: Path) -> bool:
    """Whether a safetensors file holds its header and every byte its header's offsets point to, and no more."""
    with open(path, "rb") as file:
        try:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
        except (struct.error, UnicodeDecodeError, json.JSONDecodeError):
            return False
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    return path.stat().st_size == 8 + length + max(ends, default=0)
