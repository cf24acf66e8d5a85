"""Token-budget batches for train.py: pairs of similar lengths packed up to a number of padded tokens (sec. 5.1)."""

import json
import time
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute
import torch
from transformers.trainer_pt_utils import BatchRebalanceSampler, LengthGroupedSampler, get_length_grouped_indices

from vanilla_cli import UsageError
from vanilla_files import BATCHING_RECORD, trainer_state


def padded_length(length, multiple: int | None):
    """The length a collator pads `length` (an int or an array of them) to, rounding up to `multiple` where given."""
    return length if not multiple else (length + multiple - 1) // multiple * multiple


def sequence_lengths(dataset, column: str) -> np.ndarray:
    """The length of each row's `column` (token ids): from the Arrow table of a `datasets.Dataset` (in its row order,
    after any select or shuffle), where reading row by row takes ~0.23 s per column of 29k rows (Multi30k)."""
    if isinstance(dataset, datasets.Dataset):
        return pyarrow.compute.list_value_length(dataset.with_format("arrow")[column]).to_numpy()
    return np.array([len(ids) for ids in dataset[column]], dtype=np.int64)


def length_order(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """One sort key per (source, target) length pair: the longer side, then the source side in alternating
    directions, then the target side (the three as digits of one integer, in a base above every length).

    The snake through the lengths keeps neighbours close on both sides where one length ends and the next begins; on
    Multi30k (batches of 8192 tokens) it pads 3.8% of the tokens, against 7.5% for a plain sort by (source, target)."""
    longer = np.maximum(source, target)
    base = int(longer.max()) + 1
    source_digit = np.where(longer % 2 == 1, source, base - 1 - source)
    return (longer * base + source_digit) * base + target


class TokenBudgetBatchSampler(BatchRebalanceSampler):
    """Batches of at most `max_tokens` padded source + target tokens, from pairs of similar lengths, per epoch.

    Sec. 5.1: "Sentence pairs were batched together by approximate sequence length. Each training batch contained a
    set of sentence pairs containing approximately 25000 source tokens and 25000 target tokens." Each epoch (drawn
    from seed + epoch) shuffles the pairs, sorts them stably by `length_order`, so that pairs of equal lengths meet
    in a new order, packs them greedily in that order and shuffles the batches. Rank r of num_replicas
    takes every num_replicas-th batch; the last len % num_replicas batches of an epoch's draw are left out so that
    every rank takes as many steps. The batch boundaries depend on the sorted lengths only: every epoch has the
    same number of batches, which Trainer counts to resume mid-epoch.

    The lengths are held as arrays and sorted by their rank among the distinct length pairs, so that the 4.5M pairs
    of WMT 2014 English-German take seconds, not minutes, to set up and to order each epoch.

    A BatchRebalanceSampler by type only: Trainer passes that rank-aware kind to the DataLoader as its batch_sampler
    and keeps accelerate from sharding it a second time.
    """

    def __init__(
        self,
        source_lengths: Sequence[int],
        target_lengths: Sequence[int],
        max_tokens: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        pad_to_multiple_of: int | None = None,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not one of the {num_replicas} replicas")
        source, target = np.asarray(source_lengths, dtype=np.int64), np.asarray(target_lengths, dtype=np.int64)
        if source.shape != target.shape:
            raise ValueError(f"{len(source)} source lengths but {len(target)} target lengths")
        self.max_tokens, self.seed, self.epoch = max_tokens, seed, 0
        self.num_replicas, self.rank, self.pad_to_multiple_of = num_replicas, rank, pad_to_multiple_of
        # The distinct length pairs in length order (where each first occurs), each pair's rank among them, and how
        # many pairs have each.
        _, first, rank_of_pair, counts = np.unique(
            length_order(source, target), return_index=True, return_inverse=True, return_counts=True
        )
        self.rank_of_pair = torch.from_numpy(rank_of_pair)
        sources, targets = source[first], target[first]
        longest = int(self.width(sources, targets).max())
        if longest > max_tokens:
            raise UsageError(
                f"--max_tokens {max_tokens} cannot hold the longest pair ({longest} padded source + target tokens); "
                f"expected at least {longest}, or shorter --max_source_length / --max_target_length"
            )
        self.bounds = self.pack(sources.tolist(), targets.tolist(), counts.tolist())
        if len(self.bounds) < num_replicas:
            raise UsageError(
                f"--max_tokens {max_tokens} packs the training data into {len(self.bounds)} batch(es), fewer than the "
                f"{num_replicas} processes, which take one each a step; expected a smaller --max_tokens"
            )

    def width(self, source, target):
        """Padded source + target tokens of one pair of a batch whose longest sides are `source` and `target`."""
        return padded_length(source, self.pad_to_multiple_of) + padded_length(target, self.pad_to_multiple_of)

    def pack(self, sources: list[int], targets: list[int], counts: list[int]) -> list[tuple[int, int]]:
        """(start, end) of each batch in the sorted order: as many pairs as the budget holds, in that order, given the
        distinct length pairs in that order and how many pairs have each (pairs of equal lengths join a batch alike)."""
        bounds, start, end, source, target = [], 0, 0, 0, 0  # the open batch: [start, end), its longest sides
        for source_length, target_length, count in zip(sources, targets, counts, strict=True):
            while count:
                wider = self.width(max(source, source_length), max(target, target_length))
                room = self.max_tokens // wider - (end - start)
                if room <= 0:  # full: the next batch begins with these pairs
                    bounds.append((start, end))
                    start, source, target = end, 0, 0
                    continue
                taken = min(room, count)
                end, count = end + taken, count - taken
                source, target = max(source, source_length), max(target, target_length)
        bounds.append((start, end))
        return bounds

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.bounds) // self.num_replicas

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        shuffled = torch.randperm(len(self.rank_of_pair), generator=generator)
        order = shuffled[torch.sort(self.rank_of_pair[shuffled], stable=True).indices]  # ties stay shuffled
        drawn = torch.randperm(len(self.bounds), generator=generator).tolist()[: len(self) * self.num_replicas]
        for index in drawn[self.rank :: self.num_replicas]:
            start, end = self.bounds[index]
            yield order[start:end].tolist()


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' LengthGroupedSampler with each epoch's order drawn from the seed and the epoch, as accelerate's
    SeedableRandomSampler draws the random sampler's: transformers' draws it from the global random state, which a
    resumed run does not have at that epoch's start, so Trainer would skip the trained batches of another order."""

    def __init__(self, batch_size: int, lengths: Sequence[int], seed: int):
        super().__init__(batch_size, lengths=list(lengths))
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def batching_record(args, pad_to_multiple_of: int | None) -> dict:
    """What decides an epoch's batches, and so which pairs a run resumed inside that epoch skips."""
    record = {"processes": args.world_size, "gradient_accumulation_steps": args.gradient_accumulation_steps}
    record["data_seed"] = args.seed if args.data_seed is None else args.data_seed
    if getattr(args, "max_tokens", None) is not None:
        record.update(max_tokens=args.max_tokens, pad_to_multiple_of=pad_to_multiple_of)
    else:
        record.update(
            per_device_train_batch_size=args.per_device_train_batch_size,
            train_sampling_strategy=str(args.train_sampling_strategy),
        )
    return record


def resumed_batching_warning(checkpoint: Path, record: dict) -> str | None:
    """A warning when `checkpoint` stopped inside an epoch that this run's batching cuts otherwise: Trainer skips as
    many batches as were trained, which are then other pairs."""
    try:
        before = json.loads((checkpoint / BATCHING_RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # a checkpoint of an older train.py: nothing to compare
    epoch = (trainer_state(checkpoint) or {}).get("epoch") or 0.0
    if not isinstance(before, dict) or round(epoch, 6) == round(epoch):
        return None  # at an epoch's end, the next epoch's batches are drawn whole
    differ = [
        f"{name} {before.get(name)} (now {record.get(name)})"
        for name in dict.fromkeys([*before, *record])
        if before.get(name) != record.get(name)
    ]
    if not differ:
        return None
    return (
        f"warning: {checkpoint} stopped inside an epoch (epoch {epoch:.2f}) that this run batches otherwise: "
        f"{'; '.join(differ)}. Trainer skips as many of the new batches as it had trained, so the rest of this epoch "
        "trains some pairs twice and leaves others out (later epochs are whole); resume with the checkpoint's "
        "batching to continue the run exactly"
    )


class TokenCounter:
    """The training batches' real (not padding) and padded source + target tokens, and the rates they were trained at.

    Counts stay on the device between logs, so counting adds no synchronization to a step."""

    def __init__(self):
        self.real, self.padded = None, 0  # this process's, since the run began
        self.last = (0, 0, None)  # all processes' real and padded tokens at the last log, and its time.time()
        self.paused = 0.0  # seconds since the last log spent evaluating and saving checkpoints, not training

    def count(self, inputs: dict) -> None:
        real = inputs["attention_mask"].sum() + inputs["labels"].ne(-100).sum()
        self.real = real if self.real is None else self.real + real
        self.padded += inputs["input_ids"].numel() + inputs["labels"].numel()

    def rates(self, accelerator, start_time: float, runtime: float | None = None) -> dict[str, float]:
        """Tokens per second of all processes over the training time since the last log (or `start_time`); with
        `runtime`, over the run's runtime."""
        real = self.real if self.real is not None else torch.zeros((), device=accelerator.device)
        totals = torch.stack([real.to(torch.float64), torch.tensor(float(self.padded), device=real.device)])
        real, padded = accelerator.reduce(totals, reduction="sum").tolist()
        now = time.time()
        if runtime is not None:
            return {"train_tokens_per_second": real / runtime, "train_padded_tokens_per_second": padded / runtime}
        seconds = now - (self.last[2] or start_time) - self.paused
        rates = {
            "tokens_per_second": (real - self.last[0]) / seconds,
            "padded_tokens_per_second": (padded - self.last[1]) / seconds,
        }
        self.last, self.paused = (real, padded, now), 0.0
        return rates
