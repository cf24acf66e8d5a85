"""data_args.json: what a model was trained on, written by train.py beside the model and read by eval.py."""

import hashlib
import json
import os
import sys
from pathlib import Path

from vanilla_cli import UsageError, is_main_process
from vanilla_corpus import DataArguments, dataset_folder_files
from vanilla_files import DATA_RECORD, TRAINER_STATE, complete_checkpoints, sha256_of

# The DataArguments a model folder's DATA_RECORD holds (file paths made absolute), and "embedded_task".
DATA_SOURCE_ARGS = ("dataset_name", "dataset_config_name", "train_file", "validation_file", "test_file")
DATA_RECORD_KEYS = (*DATA_SOURCE_ARGS, "source_lang", "target_lang", "max_source_length", "max_target_length")
# Also in the record: --max_train_samples (absent from the records of older train.py runs: none).
TRAIN_SAMPLES = "max_train_samples"
# The keys that fix what a run trains on (the validation and test files only evaluate it).
TRAINING_DATA_KEYS = (*(key for key in DATA_RECORD_KEYS if key not in ("validation_file", "test_file")), TRAIN_SAMPLES)
# Also in the record: the SHA-256 of the training data, the --train_file or the train split's files of a local
# --dataset_name folder (absent from the records of older train.py runs; None for a Hub dataset).
TRAIN_FILE_DIGEST = "train_file_sha256"


def dataset_location(name: str | None) -> str | None:
    """A --dataset_name that names a local folder (which `datasets` reads before the Hub), made absolute, so that it
    is found from any working directory; a Hub name as it is."""
    return os.path.abspath(name) if name is not None and os.path.exists(name) else name


def local_training_files(data_args: DataArguments) -> list[Path]:
    """The files a run trains on, where they are local: --train_file, or the train split of a --dataset_name folder
    as `datasets` resolves it (its file names, or the splits its README declares)."""
    if data_args.train_file is not None:
        path = Path(data_args.train_file)
        return [path] if path.is_file() else []
    return dataset_folder_files(data_args.dataset_name, data_args.dataset_config_name).get("train", [])


def training_data_digest(files: list[Path]) -> str | None:
    """The SHA-256 of one file's content (a compressed file's text, which compressing it anew leaves as it was); of
    several, the SHA-256 of their digests in order."""
    digests = [sha256_of(path, decompressed=True) for path in files]
    if len(digests) <= 1:
        return digests[0] if digests else None
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def data_record(data_args: DataArguments) -> dict:
    """What the model was trained on (data_args.json beside it): eval.py's defaults."""
    record = {name: getattr(data_args, name) for name in DATA_RECORD_KEYS}
    record["dataset_name"] = dataset_location(record["dataset_name"])
    for name in ("train_file", "validation_file", "test_file"):
        if record[name] is not None:
            record[name] = os.path.abspath(record[name])
    record["embedded_task"] = data_args.uses_embedded_task
    record[TRAIN_SAMPLES] = getattr(data_args, TRAIN_SAMPLES, None)  # train.py's TrainDataArguments
    record[TRAIN_FILE_DIGEST] = training_data_digest(local_training_files(data_args))
    return record


def read_data_record(folder: Path) -> dict | None:
    """The DATA_RECORD train.py writes into a model folder (None if there is none), checked."""
    path = folder / DATA_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: not valid JSON ({error})") from None
    missing = [key for key in (*DATA_RECORD_KEYS, "embedded_task") if not isinstance(record, dict) or key not in record]
    if missing:
        raise UsageError(f"{path}: expected a JSON object with the keys {', '.join(missing)}")
    return record


def model_data_record(model: Path) -> dict | None:
    """The DATA_RECORD of a model folder; for a checkpoint of a run (checkpoint-N with its trainer state), the run's."""
    record = read_data_record(model)
    if record is None and (model / TRAINER_STATE).is_file():
        record = read_data_record(model.parent)
    return record


def run_data_record(run: Path) -> dict | None:
    """The data of a run's checkpoints (its newest complete checkpoint's DATA_RECORD), else of the run folder: the
    folder keeps an older model's record until a run with --overwrite_output_dir saves its own at the end."""
    checkpoints = complete_checkpoints(run) if run.is_dir() else []
    return (checkpoints and read_data_record(checkpoints[-1])) or read_data_record(run)


def resolve_data(data: DataArguments, given: set[str], record: dict | None, model: str, split: str | None) -> None:
    """Defaults from the model's DATA_RECORD for every data argument not given; with no data source given, the
    recorded data of `split` (None: no data needed), or UsageError naming what to pass."""
    if record is not None:
        for name in ("source_lang", "target_lang", "max_source_length", "max_target_length"):
            if name not in given:
                setattr(data, name, record[name])
        trained = (record["source_lang"], record["target_lang"])
        if (data.source_lang, data.target_lang) == trained[::-1] and trained[0] != trained[1]:
            raise UsageError(
                f"{model} translates {trained[0]} -> {trained[1]} ({DATA_RECORD}); --source_lang {data.source_lang} "
                f"--target_lang {data.target_lang} asks for the other direction"
            )
    if split is None or given & set(DATA_SOURCE_ARGS):
        return
    data_flags = f"--{split}_file FILE with --source_lang and --target_lang, or --dataset_name"
    if record is None:
        if not os.path.exists(model):  # a Hub id, or a mistyped folder: the data is unknown either way
            raise UsageError(
                f"{model}: no such model folder here, and a Hub model holds no {DATA_RECORD}, so the data to score is "
                f"unknown: check --model, or pass {data_flags}"
            )
        raise UsageError(
            f"{model} has no {DATA_RECORD} (a model from an older train.py or the Hub), so the data to score is "
            f"unknown: pass {data_flags}"
        )
    if record["embedded_task"]:
        return  # DataArguments without a data source: the embedded task
    if record["dataset_name"]:
        data.dataset_name, data.dataset_config_name = record["dataset_name"], record["dataset_config_name"]
    elif record[f"{split}_file"]:
        setattr(data, f"{split}_file", record[f"{split}_file"])
    else:
        raise UsageError(
            f"{model} was trained without {split} data ({DATA_RECORD} has no {split}_file): pass {data_flags}"
        )


def resume_data(data: DataArguments, given: set[str], checkpoint: Path) -> None:
    """A resumed run trains on its checkpoint's data (the DATA_RECORD in it): each data argument not given is the
    record's, and a given one that changes the training data (the corpus, the languages, the lengths, the pairs
    read) is refused by name, as is a training file whose content changed since, since Trainer would go on skipping
    the epoch's trained batches in other data. The validation and test files may change. A checkpoint without a
    record (of an older train.py, or from the Hub, where the record is not pushed) leaves the data arguments as
    given; given none, that is the embedded task, which a warning names."""
    record = read_data_record(checkpoint)
    if record is None:
        if not given & set(DATA_SOURCE_ARGS) and is_main_process():
            print(
                f"warning: {checkpoint} has no {DATA_RECORD} to say what it was trained on, and no data flag is given: "
                "resuming on the embedded task",
                file=sys.stderr,
            )
        return
    record = {TRAIN_SAMPLES: None, **record, "dataset_name": dataset_location(record["dataset_name"])}  # older ones
    for name in (*DATA_RECORD_KEYS, TRAIN_SAMPLES):
        if name not in given:
            setattr(data, name, record[name])
    now = data_record(data)

    def shown(name: str, values: dict) -> str:
        if values[name] is not None:
            return str(values[name])
        return "none, the embedded task" if values["embedded_task"] and name in DATA_SOURCE_ARGS else "none"

    differ = [
        f"--{name} {shown(name, now)} (the checkpoint's: {shown(name, record)})"
        for name in TRAINING_DATA_KEYS
        if now[name] != record[name]
    ]
    if differ:
        raise UsageError(
            f"{checkpoint} was trained on other data ({DATA_RECORD} in it); these differ: {'; '.join(differ)}; drop "
            "them to resume on its data"
        )
    recorded, current = record.get(TRAIN_FILE_DIGEST), now[TRAIN_FILE_DIGEST]
    if recorded and current and current != recorded:  # (a file that is gone: the loader names it)
        # Named by its flag where given; else it is the record's.
        if now["train_file"]:
            flag = "--train_file" if "train_file" in given else "the training file"
            changed = f"{flag} {now['train_file']} has"
        else:
            files = ", ".join(map(str, local_training_files(data)))
            flag = "--dataset_name" if "dataset_name" in given else "the dataset"
            changed = f"the train split of {flag} {now['dataset_name']} ({files}) has"
        raise UsageError(
            f"{changed} changed since {checkpoint} was trained on it (its SHA-256 is not the one in {DATA_RECORD}); "
            "put the data back as it was to resume, or train on the new data in a new run (another --output_dir)"
        )
