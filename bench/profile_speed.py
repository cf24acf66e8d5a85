"""Where our model spends its time on the CPU: torch.profiler tables for a training step and for beam-4 generation.

    python bench/profile_speed.py [--model marian] [--bf16] [--rows 25] [--threads 2] [--skip-generation]

Uses bench_speed.py's small shape and inputs; prints operators sorted by self CPU time.
"""

import argparse

import torch
from bench_speed import (  # the script's folder is on the path
    SHAPES,
    autocast_context,
    bench_inputs,
    build_marian,
    build_ours,
    generation_call,
    training_step,
)
from torch.profiler import ProfilerActivity, profile


def show(title: str, fn, rows: int, steps: int):
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    print(f"\n=== {title} ({steps} calls) ===")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=["ours", "marian"], default="ours")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="in bf16 autocast, as bench_speed.py's bf16 training rows")
    parser.add_argument("--skip-generation", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    shape = SHAPES["small"]
    batch, source = bench_inputs(shape)

    torch.manual_seed(0)
    model = (build_ours if args.model == "ours" else build_marian)(shape)
    autocast = autocast_context(torch.device("cpu"), args.bf16)
    show("training step", training_step(model.train(), args.model, batch, autocast), args.rows, args.steps)
    if args.skip_generation:
        return
    model.eval()
    show(
        "beam-4 generation",
        generation_call(model, source, 4, shape.new_tokens, autocast),
        args.rows,
        args.steps,
    )


if __name__ == "__main__":
    main()
