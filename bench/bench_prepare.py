"""What train.py does with a large corpus before its first step: load and check it, learn the BPE, tokenize it.

    python bench/bench_prepare.py [--copies 35] [--preprocessing_num_workers N]

The corpus is Multi30k's training split written `--copies` times into one JSON-lines file (35 copies: 1,015,000
pairs), read through the same functions train.py calls, each phase timed on its own.
"""

import argparse
import tempfile
import time
from pathlib import Path

from vanilla_corpus import DataArguments, load_raw_datasets
from vanilla_tokenizer import corpus_texts, tokenize, train_bpe_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "multi30k")
    parser.add_argument("--copies", type=int, default=35, help="copies of Multi30k's 29,000 training pairs")
    parser.add_argument("--preprocessing_num_workers", type=int, default=None, help="train.py's flag")
    parser.add_argument("--vocab_size", type=int, default=8000)
    args = parser.parse_args()
    text = (args.data / "train.jsonl").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.jsonl"
        path.write_text(text * args.copies, encoding="utf-8")
        data = DataArguments(train_file=str(path), source_lang="de", target_lang="en")
        seconds = {}
        start = time.perf_counter()
        raw = load_raw_datasets(data)
        seconds["load and check"] = time.perf_counter() - start
        start = time.perf_counter()
        texts = corpus_texts(raw, data.source_lang, data.target_lang)
        seconds["BPE text"] = time.perf_counter() - start
        start = time.perf_counter()
        tokenizer = train_bpe_tokenizer(texts, args.vocab_size)
        seconds["BPE learned"] = time.perf_counter() - start
        start = time.perf_counter()
        tokenize(raw, tokenizer, data, "length", args.preprocessing_num_workers)
        seconds["tokenized"] = time.perf_counter() - start
    print(f"{len(raw['train']):,} pairs, --preprocessing_num_workers {args.preprocessing_num_workers}")
    print("| " + " | ".join(seconds) + " | total |\n|" + "---|" * (len(seconds) + 1))
    print("| " + " | ".join(f"{value:.1f} s" for value in seconds.values()) + f" | {sum(seconds.values()):.1f} s |")


if __name__ == "__main__":
    main()
