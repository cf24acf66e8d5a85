"""Set-up and per-epoch cost of train.py's token-budget batches (--max_tokens) at the scale of WMT 2014.

    python bench/bench_sampler.py [--pairs 4500000] [--max_tokens 25000]

The pairs' lengths are drawn to look like a subword-tokenized news corpus (log-normal sources, median ~25 tokens,
targets within ~15% of them), in a `datasets.Dataset` as train.py tokenizes one. It times what a run does with them:
building the sampler from the dataset (train.py builds two), drawing one epoch's batches, and the padding fraction
train.py reports.
"""

import argparse
import time
import types

import datasets
import numpy as np
import pyarrow

from vanilla_batching import TokenBudgetBatchSampler, sequence_lengths
from vanilla_trainer import padding_fraction


def token_lists(lengths: np.ndarray) -> pyarrow.ListArray:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pyarrow.ListArray.from_arrays(pyarrow.array(offsets), pyarrow.array(np.full(offsets[-1], 5, np.int32)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4_500_000, help="sentence pairs (WMT 2014 en-de: 4.5M)")
    parser.add_argument("--max_tokens", type=int, default=25000, help="padded tokens a batch (sec. 5.1: ~25000)")
    parser.add_argument("--pad_to_multiple_of", type=int, default=8)
    args = parser.parse_args()
    generate = np.random.default_rng(0)
    source = np.clip(generate.lognormal(3.2, 0.6, args.pairs).astype(int), 1, 256)
    target = np.clip((source * generate.normal(1.0, 0.15, args.pairs)).astype(int), 1, 256)
    dataset = datasets.Dataset(pyarrow.table({"input_ids": token_lists(source), "labels": token_lists(target)}))

    start = time.perf_counter()
    sampler = TokenBudgetBatchSampler(
        sequence_lengths(dataset, "input_ids"),
        sequence_lengths(dataset, "labels"),
        args.max_tokens,
        seed=1,
        pad_to_multiple_of=args.pad_to_multiple_of,
    )
    built = time.perf_counter() - start
    start = time.perf_counter()
    batches = sum(1 for _ in sampler)
    epoch = time.perf_counter() - start
    trainer = types.SimpleNamespace(
        train_dataset=dataset, data_collator=types.SimpleNamespace(pad_to_multiple_of=args.pad_to_multiple_of)
    )
    start = time.perf_counter()
    padding = padding_fraction(trainer, types.SimpleNamespace(batch_sampler=sampler))
    padding_seconds = time.perf_counter() - start
    print(f"{args.pairs:,} pairs, --max_tokens {args.max_tokens}: {batches:,} batches, {padding:.1%} padding")
    print("| sampler set-up | one epoch's batches | padding fraction |\n|---|---|---|")
    print(f"| {built:.2f} s | {epoch:.2f} s | {padding_seconds:.2f} s |")


if __name__ == "__main__":
    main()
