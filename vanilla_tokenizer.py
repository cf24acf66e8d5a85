"""The joint source+target BPE (sec. 5.1): learned on the training split, then the corpus tokenized with it."""

import atexit
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from configuration_vanilla import EOS_TOKEN_ID, SPECIAL_TOKENS, UNK_TOKEN_ID
from vanilla_cli import UsageError
from vanilla_corpus import DataArguments, sentences

if TYPE_CHECKING:
    from vanilla_train_arguments import ModelArguments, TrainingArguments

STREAMED_TOKENIZER_PAIRS = 100_000  # with --streaming and no --tokenizer_name: the BPE's sample of the training split


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, given: bool = True):
    """A joint source+target BPE (sec. 5.1) as a PreTrainedTokenizerFast; SPECIAL_TOKENS take the first ids.

    Words are split at whitespace and marked with a leading "▁" (Metaspace), so decoding restores the text, and
    punctuation is split off, so "street." and "street" share one subword instead of taking two vocabulary entries
    (on Multi30k, 1,243 of 8,000 entries were words glued to punctuation). Every encoded sentence ends with </s>;
    the decoder starts from <s> (VanillaConfig.decoder_start_token_id). A vocab_size below the special tokens plus
    the text's distinct characters, which a BPE must all hold, is a UsageError that names that minimum (and, for a
    size not `given` as --vocab_size, the default_vocab_size, the flag to pass).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    eos, unk = SPECIAL_TOKENS[EOS_TOKEN_ID], SPECIAL_TOKENS[UNK_TOKEN_ID]
    tokenizer = Tokenizer(models.BPE(unk_token=unk))
    # Whitespace is a word boundary and nothing more: a stray, doubled or trailing space would be a token of its own.
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    # "▁" marks a word's start (Metaspace); a dropped <unk> leaves its "▁" piece alone, so runs of them read as one
    # space and none at either end, as the normalizer gave the text (decoders.Strip fails on an empty sequence).
    tokenizer.decoder = decoders.Sequence(
        [decoders.Fuse(), decoders.Replace(Regex("▁+"), " "), decoders.Replace(Regex("^ | $"), "")]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, 0), special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if tokenizer.get_vocab_size() > vocab_size:  # the trainer keeps every character, whatever the size asked for
        minimum = tokenizer.get_vocab_size()
        size = f"--vocab_size {vocab_size}" if given else f"the default vocabulary size, {vocab_size},"
        raise UsageError(
            f"{size} is too small for this text; expected at least {minimum}: the {len(SPECIAL_TOKENS)} special "
            f"tokens and its {minimum - len(SPECIAL_TOKENS)} distinct characters"
            + ("" if given else f"; pass --vocab_size {minimum} or more")
        )
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, EOS_TOKEN_ID)]
    )
    return wrap_tokenizer(tokenizer)


def wrap_tokenizer(tokenizer):
    """A `tokenizers.Tokenizer` with the special tokens above as a PreTrainedTokenizerFast that VanillaConfig fits.

    A sentence that holds "</s>", "<pad>", "<unk>" or "<s>" is encoded as that text (split_special_tokens, saved in
    tokenizer_config.json): read as the control token, "</s>" ended a source early and taught the model to stop
    mid-sentence, and decoding dropped all four from the output. The special ids come only from the post-processor
    and from generate()."""
    from transformers import PreTrainedTokenizerFast

    pad, bos, eos, unk = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=pad,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        model_input_names=["input_ids", "attention_mask"],
        split_special_tokens=True,
    )


def default_vocab_size(texts: Iterable[str]) -> int:
    """A vocabulary sized to the data: a quarter of the distinct words, between 128 and the paper's 37,000."""
    distinct = len({word for text in texts for word in text.split()})
    return int(min(37000, max(128, distinct // 4)))


def corpus_texts(raw: datasets.DatasetDict, source_lang: str, target_lang: str) -> list[str]:
    """Source and target sentences of the training split: the text a joint BPE is learned from."""
    train = raw["train"]
    return sentences(train, source_lang) + sentences(train, target_lang)


def streamed_texts(stream: datasets.IterableDataset, source_lang: str, target_lang: str, pairs: int) -> list[str]:
    """Source and target sentences of the first `pairs` pairs of a streamed split: a bounded sample for the BPE."""
    sample = [row["translation"] for row in stream.take(pairs)]
    return [pair[source_lang] for pair in sample] + [pair[target_lang] for pair in sample]


def build_tokenizer(
    model_args: "ModelArguments", raw, data_args: DataArguments, args: "TrainingArguments"
) -> PreTrainedTokenizerBase:
    """--tokenizer_name, or a joint BPE learned on the training split by the main process and sent to the others;
    either truncates to --max_source_length, the length the model is trained on, once saved with it."""
    if model_args.tokenizer_name:
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name)
        except (OSError, ValueError) as error:
            raise UsageError(f"cannot load tokenizer {model_args.tokenizer_name!r}: {error}") from None
    else:
        texts = tokenizer_texts(raw, data_args, args)
        given = model_args.vocab_size is not None
        vocab_size = model_args.vocab_size if given else default_vocab_size(texts)
        serialized = [
            train_bpe_tokenizer(texts, vocab_size, given).backend_tokenizer.to_str()
            if args.process_index == 0
            else None
        ]
        if args.world_size > 1:
            torch.distributed.broadcast_object_list(serialized, src=0)
        tokenizer = wrap_tokenizer(Tokenizer.from_str(serialized[0]))
        if given and len(tokenizer) < vocab_size and args.process_index == 0:
            print(unfilled_vocabulary_note(vocab_size, len(tokenizer)), file=sys.stderr)
    tokenizer.model_max_length = data_args.max_source_length  # what truncation=True cuts to: the trained length
    return tokenizer


def unfilled_vocabulary_note(asked: int, learned: int) -> str:
    """The line that says a --vocab_size the training text cannot fill: the BPE stops when no pair is left to merge."""
    return (
        f"note: --vocab_size {asked}: the BPE learned on the training text stops at {learned} entries (the special "
        f"tokens, its characters and every merge it holds), so the vocabulary and the model's embeddings have {learned}"
    )


def tokenizer_texts(raw, data_args: DataArguments, args: "TrainingArguments") -> list[str]:
    """The text a joint BPE is learned from: the training split, or with --streaming its first pairs (a sample)."""
    if not args.streaming:
        return corpus_texts(raw, data_args.source_lang, data_args.target_lang)
    if args.process_index == 0:
        print(
            f"--streaming: learning the BPE on (at most) the first {STREAMED_TOKENIZER_PAIRS:,} sentence pairs of "
            "the training split (pass --tokenizer_name to use another tokenizer)"
        )
    return streamed_texts(raw["train"], data_args.source_lang, data_args.target_lang, STREAMED_TOKENIZER_PAIRS)


def tokenize_once_per_machine(
    raw, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments, args: "TrainingArguments"
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """`tokenize` for a run of one or more processes. Under DDP the first process on each machine tokenizes the corpus
    into Arrow files and the others read them (`main_process_first`, as transformers' example scripts map a corpus):
    one tokenization a machine instead of one a process, and the tokens memory-mapped from one copy. The files live
    in a temporary folder until the process that wrote them exits."""
    length_column, num_proc = args.length_column_name, args.preprocessing_num_workers
    if args.world_size == 1 or isinstance(raw, datasets.IterableDatasetDict):  # a stream maps as training reads it
        return tokenize(raw, tokenizer, data_args, length_column, num_proc)
    token = [secrets.token_hex(8) if args.process_index == 0 else None]
    torch.distributed.broadcast_object_list(token, src=0)
    folder = Path(tempfile.gettempdir()) / f"vanilla-tokenized-{token[0]}"  # on each machine its own
    with args.main_process_first(local=True, desc="tokenizing the corpus"):
        if args.local_process_index == 0:
            folder.mkdir()
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
        return tokenize(raw, tokenizer, data_args, length_column, num_proc, folder)


def evaluation_splits_read_whole(tokenized: datasets.IterableDatasetDict) -> dict:
    """A stream's validation and test splits, read whole into Datasets (training's stays a stream). Evaluation then
    scores each sentence once, and under DDP gives every process as many batches: accelerate splits a stream of
    several files between the processes by file, so that files of unequal size left them unequal work and
    mismatched collectives."""
    return {
        split: stream if split == "train" else datasets.Dataset.from_list(list(stream))
        for split, stream in tokenized.items()
    }


def tokenize(
    raw,
    tokenizer: PreTrainedTokenizerBase,
    data_args: DataArguments,
    length_column: str,
    num_proc: int | None = None,
    folder: Path | None = None,
):
    """input_ids from the source side, labels from the target side; both end with </s>; in `num_proc` processes;
    written to (or, where already there, read from) `<folder>/<split>.arrow` when a folder is given.

    The length column, the longer side of each pair, is what group_by_length sorts on: grouping by the source alone
    leaves the targets' padding (on Multi30k, batches of 64: 18.7% of an epoch's tokens against 9.2%)."""

    def encode(batch):
        pairs = batch["translation"]
        source = [pair[data_args.source_lang] for pair in pairs]
        target = [pair[data_args.target_lang] for pair in pairs]
        features = tokenizer(source, max_length=data_args.max_source_length, truncation=True)
        labels = tokenizer(
            text_target=target, max_length=data_args.max_target_length, truncation=True, return_attention_mask=False
        )
        features["labels"] = labels["input_ids"]
        encoded = zip(features["input_ids"], features["labels"], strict=True)
        features[length_column] = [max(len(source), len(target)) for source, target in encoded]
        return features

    if isinstance(raw, datasets.IterableDatasetDict):  # a stream maps lazily, as training reads it
        return raw.map(encode, batched=True, remove_columns=["translation"])
    files = {split: str(folder / f"{split}.arrow") for split in raw} if folder is not None else None
    return raw.map(
        encode,
        batched=True,
        remove_columns=["translation"],
        num_proc=num_proc,
        cache_file_names=files,
        desc="Tokenizing",
    )
