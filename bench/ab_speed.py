"""Side-by-side timings of two or three variants in one process, in alternating order, with bench_speed.py's inputs.

    python bench/ab_speed.py train [--bf16] [--rounds 20]     # ours, every position / ours, labelled only / Marian
    python bench/ab_speed.py ctranslate2 [--rounds 20]        # our CTranslate2 conversion / Marian's, f32 and int8
    python bench/ab_speed.py masks [--shape tiny] [--rounds 60]  # compiled beam 4: who builds the decoder's mask

`train` times a full step (bench_speed.training_step) of our model projecting every target position onto the
vocabulary, of our model projecting the labelled positions only (what VanillaTrainer asks of it), and of
MarianMTModel; in bf16 autocast all three use eager attention, as train.py does on a CPU. `ctranslate2` converts
both models as bench_speed.py does and times `translate_batch` on its 16 sources at a fixed output length, greedy and
beam 4. `masks` times eval.py --compile's beam-4 decoding (static cache, the step compiled) of our model, which
builds the decoder's causal mask inside the step, against a copy given transformers' `create_masks_for_generate`,
with which generate() builds it before each step, outside the compiled graph (transformers 5.2x; 5.17 builds none
without a decoder mask of the caller's). Each round runs every variant once, the order reversed every other round;
the table gives medians, and for pairs the median of the per-round ratios with its 25th-75th percentiles, which load
from other processes hits least.
"""

import argparse
import contextlib
import copy
import statistics
import tempfile

import torch
from bench_speed import (  # the script's folder is on the path
    SHAPES,
    alternated_times,
    autocast_context,
    bench_inputs,
    bench_tokens,
    build_marian,
    build_ours,
    ctranslate2_call,
    ctranslate2_models,
    generation_call,
    training_step,
)
from transformers.masking_utils import create_masks_for_generate

from vanilla_translation import COMPILED_DECODING, compile_for_decoding

CPU = torch.device("cpu")
WARMUP = 2  # calls of each variant before the timed rounds


def ratio_spread(slow: list[float], fast: list[float]) -> str:
    """`slow`'s time over `fast`'s, round by round: the median and the 25th-75th percentiles."""
    ratios = sorted(a / b for a, b in zip(slow, fast, strict=True))
    quartiles = statistics.quantiles(ratios, n=4)
    return f"{statistics.median(ratios):.3f}x ({quartiles[0]:.3f}-{quartiles[2]:.3f}x)"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["train", "ctranslate2", "masks"])
    parser.add_argument("--bf16", action="store_true", help="train: bf16 autocast and eager attention")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--backend", default="inductor", help="masks: torch.compile's backend")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    shape = SHAPES[args.shape]
    batch, source = bench_inputs(shape)  # bench_speed.py's inputs
    torch.manual_seed(0)
    models = {"ours": build_ours(shape), "marian": build_marian(shape)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.shape} shape, {args.rounds} rounds")

    if args.what == "train":
        autocast = autocast_context(CPU, args.bf16)
        if args.bf16:
            for model in models.values():
                model.set_attn_implementation("eager")
        unmasked = copy.deepcopy(models["ours"]).train()
        fns = {
            "ours, every position": training_step(unmasked, "ours", batch, autocast, every_position=True),
            "ours, labelled only": training_step(models["ours"].train(), "ours", batch, autocast),
            "marian": training_step(models["marian"].train(), "marian", batch, autocast),
        }
        seconds = alternated_times(fns, CPU, WARMUP, args.rounds)
        tokens = shape.train_batch * 2 * shape.train_len
        print(f"\n{'bf16 autocast, eager' if args.bf16 else 'float32, sdpa'}; tokens/s (medians):")
        for name, values in seconds.items():
            print(f"  {name}: {tokens / statistics.median(values):,.0f}")
        every, labelled, marian = (seconds[name] for name in fns)
        print(f"  labelled only / every position: {ratio_spread(every, labelled)}")
        print(f"  labelled only / marian: {ratio_spread(marian, labelled)}")
        print(f"  every position / marian: {ratio_spread(marian, every)}")
        return

    if args.what == "masks":
        by_generate = copy.deepcopy(models["ours"])
        by_generate.create_masks_for_generate = create_masks_for_generate  # transformers' own, called by generate()
        fns = {}
        for name, model in (("decoder builds the mask", models["ours"]), ("generate() builds it", by_generate)):
            compile_for_decoding(model.eval(), "reduce-overhead", args.backend)
            fns[name] = generation_call(model, source, 4, shape.new_tokens, contextlib.nullcontext, **COMPILED_DECODING)
        seconds = alternated_times(fns, CPU, WARMUP, args.rounds)
        print("\ncompiled static beam 4; ms per generate() (medians):")
        for name, values in seconds.items():
            print(f"  {name}: {1000 * statistics.median(values):.1f}")
        spread = ratio_spread(seconds["generate() builds it"], seconds["decoder builds the mask"])
        print(f"  generate() builds it / decoder builds the mask: {spread}")
        return

    tokens = bench_tokens(shape.vocab_size)
    with tempfile.TemporaryDirectory() as folder:
        for model in models.values():
            model.eval()
        translators, _ = ctranslate2_models(models, shape, folder, CPU, ("float32", "int8"))
        for quantization in ("float32", "int8"):
            for num_beams in (4, 1):
                fns = {
                    name: ctranslate2_call(
                        translators[f"{name}, CT2 {quantization}"], tokens, source, num_beams, shape.new_tokens
                    )
                    for name in ("ours", "marian")
                }
                seconds = alternated_times(fns, CPU, WARMUP, args.rounds)
                ours, marian = (1000 * statistics.median(seconds[name]) for name in ("ours", "marian"))
                spread = ratio_spread(seconds["marian"], seconds["ours"])
                print(
                    f"beam {num_beams}, {quantization}: ours {ours:.1f} ms, marian {marian:.1f} ms; "
                    f"marian's time / ours: {spread}"
                )


if __name__ == "__main__":
    main()
