"""The parallel corpora train.py and eval.py read: local files, Hub datasets, streams, the embedded number task.

A corpus is a `datasets.DatasetDict` with splits "train", "validation" and "test" (where available), each row
`{"translation": {source_lang: str, target_lang: str}}`, as in the WMT datasets the paper used (sec. 5.1).
"""

import csv
import functools
import io
import itertools
import json
import os
import random
from collections.abc import Iterable
from pathlib import Path

import datasets
import numpy as np
import pyarrow
import pyarrow.compute

from vanilla_cli import (
    COMPRESSIONS,
    UsageError,
    argument_dataclass,
    compression_of,
    no_such_file,
    read_text,
    text_lines,
)
from vanilla_files import sha256_of

SPLITS = ("train", "validation", "test")
# The embedded task: English number words -> German number words, e.g. "twenty-three" -> "dreiundzwanzig".
EMBEDDED_LANGS = ("en", "de")
EMBEDDED_NUMBERS = range(1, 1000)
EMBEDDED_HELD_OUT = 0.1  # fraction of the numbers in each of validation and test


@argument_dataclass
class DataArguments:
    """Where the parallel corpus comes from and which direction to translate; no data argument: the embedded task.

    Args:
        dataset_name: A dataset on the Hub (or a local dataset dir).
        dataset_config_name: Its configuration, e.g. 'de-en'.
        train_file: JSON lines (or one JSON array) or Parquet with a 'translation' column, or CSV/TSV with a column
            per language; a text format may be compressed (.gz, .bz2, .xz: train.jsonl.gz).
        validation_file: Same format as --train_file.
        test_file: Same format as --train_file.
        source_lang: Source language code (embedded task: en).
        target_lang: Target language code (embedded task: de).
        max_source_length: Source sentences are truncated to this many tokens (default: %(default)s; eval.py's
            default: the length the model was trained on, from its data_args.json).
        max_target_length: Target sentences are truncated to this many tokens in training (eval.py scores against
            the whole references and refuses it).
    """

    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    source_lang: str | None = None
    target_lang: str | None = None
    max_source_length: int = 256
    max_target_length: int = 256

    def __post_init__(self):
        # A recipe file has no shell to expand `~`: expanded here, as TrainingArguments expands its output_dir's.
        for name in ("dataset_name", "train_file", "validation_file", "test_file"):
            if getattr(self, name) is not None:
                setattr(self, name, os.path.expanduser(getattr(self, name)))
        for name in ("max_source_length", "max_target_length"):
            if getattr(self, name) < 2:
                raise UsageError(f"--{name} is {getattr(self, name)}; expected at least 2 (a token and </s>)")

    @property
    def uses_embedded_task(self) -> bool:
        return not (self.dataset_name or self.train_file or self.validation_file or self.test_file)


# The flags that cut a split to its first pairs, as transformers' run_translation.py names them.
SAMPLE_LIMITS = {"train": "max_train_samples", "validation": "max_eval_samples", "test": "max_predict_samples"}


@argument_dataclass
class TrainDataArguments(DataArguments):
    """train.py's data arguments: DataArguments, and how much of each split it reads.

    Args:
        max_train_samples: Train on the first N pairs of the training split (a quick run; the BPE is learned from
            them too).
        max_eval_samples: Evaluate on the first N pairs of the validation split.
        max_predict_samples: --do_predict translates and scores the first N pairs of the test split.
    """

    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_predict_samples: int | None = None

    def __post_init__(self):
        super().__post_init__()
        for name in SAMPLE_LIMITS.values():
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"--{name} is {getattr(self, name)}; expected at least 1 (pairs of the split)")


def first_samples(raw, data_args: TrainDataArguments):
    """Each split cut to its --max_*_samples (SAMPLE_LIMITS): its first N pairs, all of them where it has fewer."""
    for split, name in SAMPLE_LIMITS.items():
        limit = getattr(data_args, name)
        if limit is None or split not in raw:
            continue
        pairs = raw[split]
        if isinstance(pairs, datasets.IterableDataset):
            raw[split] = first_pairs_of_stream(pairs, limit)
        else:
            raw[split] = pairs.take(min(limit, len(pairs)))
    return raw


def first_pairs_of_stream(stream: datasets.IterableDataset, limit: int) -> datasets.IterableDataset:
    """A stream's first `limit` pairs, as a stream of one shard. A stream of several shards (files) is shared out by
    shard, and `take` then splits its count among them: each process under DDP, or each DataLoader worker, would
    read the first pairs of its own files. One shard is read whole by one worker of every process, each process
    keeping its share of every batch, as a one-file stream is."""
    taken = stream.take(limit)
    return datasets.IterableDataset.from_generator(functools.partial(rows_of, taken), features=taken.features)


def rows_of(stream: datasets.IterableDataset):
    """Every row of a stream, in its order, also in a DataLoader worker (where iterating the stream itself would read
    only that worker's shards)."""
    for batch in stream.iter(batch_size=1):
        yield {name: values[0] for name, values in batch.items()}


def embedded_number_task() -> datasets.DatasetDict:
    """The built-in task: 1..999 written out in English -> German words, split 80/10/10 by a fixed shuffle.

    German writes the units before the tens ("twenty-three" -> "dreiundzwanzig"), so the model has to attend out
    of order; held-out numbers are new combinations of seen parts.
    """
    from num2words import num2words

    numbers = list(EMBEDDED_NUMBERS)
    random.Random(0).shuffle(numbers)
    held_out = int(len(numbers) * EMBEDDED_HELD_OUT)
    split_numbers = {
        "train": sorted(numbers[2 * held_out :]),
        "validation": sorted(numbers[:held_out]),
        "test": sorted(numbers[held_out : 2 * held_out]),
    }
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"translation": [{"en": num2words(n, lang="en"), "de": num2words(n, lang="de")} for n in values]}
            )
            for split, values in split_numbers.items()
        }
    )


def load_raw_datasets(args: DataArguments) -> datasets.DatasetDict:
    """The corpus named by `args` (Hub dataset, local files, or the embedded task), checked; UsageError if bad.

    Fills in args.source_lang/target_lang for the embedded task (en -> de) when they are not given.
    """
    if args.dataset_config_name is not None and not args.dataset_name:
        raise UsageError(
            f"--dataset_config_name {args.dataset_config_name!r} names a configuration of --dataset_name; pass "
            "--dataset_name too (data files and the embedded task have none)"
        )
    if args.uses_embedded_task:
        args.source_lang = args.source_lang or EMBEDDED_LANGS[0]
        args.target_lang = args.target_lang or EMBEDDED_LANGS[1]
        raw = embedded_number_task()
        origin = {split: "the embedded task" for split in raw}
    elif args.dataset_name:
        raw = _load_hub_dataset(args)
        origin = {split: f"{args.dataset_name} [{split}]" for split in raw}
    else:
        files = {split: getattr(args, f"{split}_file") for split in SPLITS}
        raw = datasets.DatasetDict(
            {split: _load_local_file(path, args) for split, path in files.items() if path is not None}
        )
        origin = {split: files[split] for split in raw}
    if not args.source_lang or not args.target_lang:
        raise UsageError("--source_lang and --target_lang are required with --dataset_name or data files")
    if args.source_lang == args.target_lang:
        raise UsageError(f"--source_lang and --target_lang are both {args.source_lang!r}; expected two languages")
    for split, dataset in raw.items():
        raw[split] = as_translation_pairs(dataset, (args.source_lang, args.target_lang))
        _check_pairs(raw[split], origin[split], args.source_lang, args.target_lang)
    return raw


def as_translation_pairs(dataset, languages: tuple[str, str]):
    """A dataset with a column per language (CSV/TSV files in a --dataset_name folder) as the 'translation' column
    that run_translation.py-style data holds; any other dataset as it is."""
    columns = dataset.column_names
    if columns is None:  # a stream that does not know its columns: its first row's
        columns = list(next(iter(dataset), None) or [])
    if "translation" in columns or not all(language in columns for language in languages):
        return dataset
    return dataset.map(
        lambda row: {"translation": {language: row[language] for language in languages}}, remove_columns=columns
    )


# The data files train.py and eval.py read, by suffix: the `datasets` builder that reads them (streamed or not).
DATA_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}
# The formats a file may hold compressed, its suffix then followed by a COMPRESSIONS one (train.jsonl.gz).
TEXT_FORMATS = (".json", ".jsonl", ".csv", ".tsv")


def data_format(path: str) -> str:
    """The format of a data file (a DATA_FORMATS key) by its suffix, or by the one before a compression suffix;
    UsageError listing the formats read for any other."""
    compression = compression_of(path)
    suffix = (Path(path).with_suffix("") if compression else Path(path)).suffix.lower()  # train.jsonl.gz: .jsonl
    if suffix in (TEXT_FORMATS if compression else DATA_FORMATS):
        return suffix
    given = suffix + (compression or "")
    raise UsageError(
        f"{path}: unknown format {given!r}; expected {' or '.join(DATA_FORMATS)}, or {' or '.join(TEXT_FORMATS)} "
        f"followed by {' or '.join(COMPRESSIONS)} (e.g. train.jsonl.gz)"
    )


def dataset_folder_files(name: str | None, config: str | None) -> dict[str, list[Path]]:
    """The files of each split of a local --dataset_name folder (`name`, its configuration `config`) as `datasets`
    resolves them (their names, or the splits the folder's README declares); none for a Hub dataset."""
    if name is None or not os.path.isdir(name):
        return {}
    try:
        splits = datasets.load_dataset_builder(name, config).config.data_files
    except (OSError, ValueError):  # a folder datasets cannot read: loading it names the problem
        return {}
    return {split: [Path(path) for path in files] for split, files in (splits or {}).items()}


def check_compressed_files(paths: Iterable[Path]) -> None:
    """Reads each compressed file through, for its content's SHA-256 (which the data record reuses): one cut short or
    damaged is named now, not by the `datasets` builder reading it, in a traceback, hours into training."""
    for path in paths:
        if compression_of(path) is not None:
            sha256_of(path, decompressed=True)


def stream_raw_datasets(args: DataArguments) -> datasets.IterableDatasetDict:
    """The corpus of --dataset_name or the data files as IterableDatasets, read as training consumes them.

    JSON lines and Parquet hold a 'translation' column, CSV/TSV a column per language. Only each split's first pair
    is checked up front: the data is never held whole."""
    if args.uses_embedded_task:
        raise UsageError("--streaming reads --dataset_name or data files; the embedded task is small, drop --streaming")
    if not args.source_lang or not args.target_lang:
        raise UsageError("--source_lang and --target_lang are required with --dataset_name or data files")
    languages = (args.source_lang, args.target_lang)
    if args.dataset_name:
        folder = dataset_folder_files(args.dataset_name, args.dataset_config_name)
        check_compressed_files(itertools.chain(*folder.values()))
        try:
            streams = datasets.load_dataset(args.dataset_name, args.dataset_config_name, streaming=True)
        except Exception as error:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError, ...)
            raise UsageError(f"cannot load dataset {args.dataset_name!r}: {error}") from None
        raw = datasets.IterableDatasetDict(
            {split: as_translation_pairs(streams[split], languages) for split in SPLITS if split in streams}
        )
        if not raw:
            raise UsageError(f"dataset {args.dataset_name!r} has none of the splits {', '.join(SPLITS)}")
        origin = {split: f"{args.dataset_name} [{split}]" for split in raw}
    else:
        raw, origin = datasets.IterableDatasetDict(), {}
        for split in SPLITS:
            path = getattr(args, f"{split}_file")
            if path is None:
                continue
            suffix = data_format(path)
            if not Path(path).is_file():
                raise no_such_file(path)
            check_compressed_files([Path(path)])
            options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}  # as _read_table
            stream = datasets.load_dataset(
                DATA_FORMATS[suffix], data_files=path, split="train", streaming=True, **options
            )
            if DATA_FORMATS[suffix] == "csv":
                stream = stream.map(lambda row: {"translation": {language: row[language] for language in languages}})
                stream = stream.select_columns(["translation"])
            raw[split], origin[split] = stream, path
    for split, stream in raw.items():
        try:
            first = next(iter(stream), None)
        except Exception as error:  # a parse error of the builder (JSON, Parquet, CSV) or a column missing
            raise UsageError(f"{origin[split]}: cannot read the first pair: {error}") from None
        if first is None:
            raise UsageError(f"{origin[split]}: no sentence pairs")
        if "translation" not in first:
            raise UsageError(f"{origin[split]}: no 'translation' column (columns: {', '.join(first)})")
        if not isinstance(first["translation"], dict):  # e.g. a JSON string of the pair
            raise UsageError(f"{origin[split]}: pair 1 {pair_problem(first['translation'], languages)}")
        found = ", ".join(first["translation"])
        for language in languages:
            if language not in first["translation"]:
                raise UsageError(f"{origin[split]}: language {language!r} is not in the data (found: {found})")
    return datasets.IterableDatasetDict(
        {split: checked_stream(stream, origin[split], languages) for split, stream in raw.items()}
    )


def checked_stream(stream: datasets.IterableDataset, origin: str, languages: tuple[str, str]):
    """A stream whose pairs are checked as they are read (the BPE's sample, then training), as a loaded split's are
    up front: a pair without a sentence in either language, or with an empty one, is a UsageError naming it, not a
    traceback from the tokenizer."""

    def check(row: dict, index: int) -> dict:
        problem = pair_problem(row.get("translation"), languages)
        if problem is not None:
            raise UsageError(f"{origin}: pair {index + 1} {problem}")
        return row

    return stream.map(check, with_indices=True)


def pair_problem(pair, languages: tuple[str, str]) -> str | None:
    """What makes a streamed row's 'translation' unusable for `languages`, worded to follow "pair N"; else None."""
    if not isinstance(pair, dict):
        return f"has no 'translation' holding {{language: sentence}} (found: {pair!r})"
    for language in languages:
        sentence = pair.get(language)
        if sentence is None:  # missing, or null: older datasets fill a row's missing field with None
            return f"has no {language!r} sentence"
        if not isinstance(sentence, str):
            return f"holds {sentence!r} as its {language!r} sentence; expected a string"
        if not sentence.strip():
            return f"has an empty {language!r} sentence"
    return None


def _load_hub_dataset(args: DataArguments) -> datasets.DatasetDict:
    folder = dataset_folder_files(args.dataset_name, args.dataset_config_name)
    check_compressed_files(itertools.chain(*folder.values()))
    try:
        raw = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
    except Exception as error:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError, ...)
        raise UsageError(f"cannot load dataset {args.dataset_name!r}: {error}") from None
    if not isinstance(raw, datasets.DatasetDict):
        raise UsageError(f"dataset {args.dataset_name!r} has no splits")
    raw = datasets.DatasetDict({split: raw[split] for split in SPLITS if split in raw})
    if not raw:
        raise UsageError(f"dataset {args.dataset_name!r} has none of the splits {', '.join(SPLITS)}")
    return raw


def _load_local_file(path: str, args: DataArguments) -> datasets.Dataset:
    """One split from JSON lines or Parquet (a 'translation' column) or CSV/TSV (one column per language), the text
    formats also compressed."""
    suffix = data_format(path)
    if suffix == ".parquet":
        return _read_parquet(path)
    text = read_text(path)
    if suffix in (".json", ".jsonl"):
        rows, unit = _json_rows(path, text)
        for number, row in enumerate(rows, start=1):
            if not isinstance(row, dict) or not isinstance(row.get("translation"), dict):
                raise UsageError(f"{path}: {unit} {number} has no 'translation' column holding {{language: sentence}}")
        rows = [row["translation"] for row in rows]
        languages = sorted(set().union(*rows))
        columns = {language: [row.get(language) for row in rows] for language in languages}
    else:
        _check_lines(path, text_lines(text))
        columns = _read_table(path, text, delimiter="\t" if suffix == ".tsv" else ",")
        languages = list(columns)
    for language in (args.source_lang, args.target_lang):
        if language and language not in languages:
            raise UsageError(f"{path}: language {language!r} is not in the data (found: {', '.join(languages)})")
    if not args.source_lang or not args.target_lang:
        return datasets.Dataset.from_dict({"translation": []})  # load_raw_datasets reports the missing languages
    if suffix in (".json", ".jsonl"):
        _check_json_sentences(path, rows, (args.source_lang, args.target_lang), unit)
    source, target = columns[args.source_lang], columns[args.target_lang]
    _check_counts(path, args.source_lang, source, args.target_lang, target)
    pairs = [{args.source_lang: s, args.target_lang: t} for s, t in zip(source, target, strict=True)]
    return datasets.Dataset.from_dict({"translation": pairs})


def _read_parquet(path: str) -> datasets.Dataset:
    """The 'translation' column of a Parquet file ({language: sentence} a row), read by the builder --streaming uses;
    its pairs are checked with every split's (`_check_pairs`)."""
    if not Path(path).is_file():
        raise no_such_file(path)
    try:
        dataset = datasets.load_dataset("parquet", data_files=path, split="train")
    except Exception as error:  # pyarrow's errors for a file that is not Parquet
        raise UsageError(f"{path}: cannot read it as Parquet ({error})") from None
    if "translation" not in dataset.column_names:
        raise UsageError(f"{path}: no 'translation' column (columns: {', '.join(dataset.column_names)})")
    return dataset.select_columns(["translation"])


def _read_table(path: str, text: str, delimiter: str) -> dict[str, list[str | None]]:
    """Columns of a CSV/TSV file's text with a header row; a short row leaves None in its missing cells."""
    # TSV corpora are unquoted: a sentence may begin with a quotation mark. CSV keeps its quoting rules.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    header = next(reader)
    columns: dict[str, list[str | None]] = {name: [] for name in header}
    for number, row in enumerate(reader, start=2):
        if len(row) > len(header):
            raise UsageError(f"{path}: row {number} has {len(row)} fields but the header has {len(header)}")
        for name, cell in zip(header, row + [None] * (len(header) - len(row)), strict=True):
            columns[name].append(cell)
    return columns


def _check_lines(path: str, lines: list[str]) -> None:
    """A line-based file has lines, none of them empty; the error names the line."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise UsageError(f"{path}: line {number} is empty")
    if not lines:
        raise UsageError(f"{path}: the file is empty")


def _json_rows(path: str, text: str) -> tuple[list, str]:
    """The rows of a JSON file and what an error calls one: JSON lines ("line"), or a file holding one JSON array
    ("item"), which `datasets`' JSON builder (run_translation.py's, and --streaming's) reads as well."""
    if not text.lstrip().startswith("["):
        lines = text_lines(text)
        _check_lines(path, lines)
        rows = []
        for number, line in enumerate(lines, start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise UsageError(f"{path}: line {number} is not JSON ({error.msg})") from None
        return rows, "line"
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}: not JSON ({error.msg} at line {error.lineno})") from None
    if not rows:
        raise UsageError(f"{path}: the JSON array is empty")
    return rows, "item"


def _check_json_sentences(path: str, rows: list[dict], languages: tuple[str, str], unit: str) -> None:
    """Each JSON row holds a sentence, a string, in both languages; the error names the row (its line or item)."""
    for number, row in enumerate(rows, start=1):
        for language in languages:
            if language not in row:
                raise UsageError(f"{path}: {unit} {number} has no {language!r} sentence")
            sentence = row[language]
            if not isinstance(sentence, str):
                raise UsageError(
                    f"{path}: {unit} {number}: the {language!r} sentence is {json.dumps(sentence)}; expected a string"
                )


def _check_counts(path: str, source_lang: str, source: list, target_lang: str, target: list) -> None:
    """Every source sentence needs a target sentence and vice versa."""
    source_count = sum(sentence is not None for sentence in source)
    target_count = sum(sentence is not None for sentence in target)
    if source_count != target_count:
        raise UsageError(
            f"{path}: mismatched pair counts: {source_count} {source_lang} sentences but {target_count} "
            f"{target_lang} sentences"
        )


def _check_pairs(dataset: datasets.Dataset, origin: str, source_lang: str, target_lang: str) -> None:
    if "translation" not in dataset.column_names:
        raise UsageError(f"{origin}: no 'translation' column (columns: {', '.join(dataset.column_names)})")
    if len(dataset) == 0:
        raise UsageError(f"{origin}: no sentence pairs")
    pairs = dataset.with_format("arrow")["translation"]  # read as columns: a million pairs row by row take ~10 s
    if not pyarrow.types.is_struct(pairs.type):
        raise UsageError(f"{origin}: the 'translation' column does not hold {{language: sentence}}")
    found = [pairs.type.field(index).name for index in range(pairs.type.num_fields)]
    languages = (source_lang, target_lang)
    for language in languages:
        if language not in found:
            raise UsageError(f"{origin}: language {language!r} is not in the data (found: {', '.join(found)})")
    for language in languages:
        row = _first_not_utf8(pyarrow.compute.struct_field(pairs, language))
        if row is not None:
            raise UsageError(f"{origin}: pair {row + 1}: the {language} sentence is not UTF-8; expected UTF-8 text")
    unusable = [_first_unusable(pyarrow.compute.struct_field(pairs, language)) for language in languages]
    index = min((row for row in unusable if row is not None), default=None)
    if index is None:
        return
    pair = dataset[index]["translation"]
    for language in languages:
        sentence = pair.get(language)
        if sentence is None:
            raise UsageError(f"{origin}: mismatched pair counts: pair {index + 1} has no {language} sentence")
        if not isinstance(sentence, str):
            raise UsageError(f"{origin}: pair {index + 1}: the {language} sentence is {sentence!r}; expected a string")
        if not sentence.strip():
            raise UsageError(f"{origin}: pair {index + 1} has an empty {language} sentence")


def _first_not_utf8(sentences: pyarrow.ChunkedArray) -> int | None:
    """The row of the first sentence whose bytes are not UTF-8, which `datasets`' JSON reader stores as they are (and
    pyarrow's string functions then mangle or refuse); None if there is none."""
    try:
        sentences.validate(full=True)
        return None
    except pyarrow.ArrowInvalid:
        for row, sentence in enumerate(sentences.cast(pyarrow.binary()).to_pylist()):
            try:
                (sentence or b"").decode("utf-8")
            except UnicodeDecodeError:
                return row
        raise  # invalid for another reason: pyarrow's own error


def _first_unusable(sentences: pyarrow.ChunkedArray) -> int | None:
    """The row of the first sentence that is missing, not a string or only whitespace; None if there is none."""
    if not (pyarrow.types.is_string(sentences.type) or pyarrow.types.is_large_string(sentences.type)):
        return 0  # no row holds a string
    blank = pyarrow.compute.equal(pyarrow.compute.utf8_trim_whitespace(sentences), "")
    rows = np.flatnonzero(blank.fill_null(True).to_numpy())
    return int(rows[0]) if len(rows) else None


def sentences(dataset: datasets.Dataset, language: str) -> list[str]:
    """The `language` side of every pair of a split, read from its Arrow table in its row order (a million pairs
    read row by row take ~10 s)."""
    return pyarrow.compute.struct_field(dataset.with_format("arrow")["translation"], language).to_pylist()
