"""A CPU training step of ours and of MarianMTModel, each model in a process of its own, with glibc's allocator as it
comes and with freed memory kept for reuse (no page faults), in alternating rounds.

    python bench/bench_allocator.py [--rounds 3] [--steps 15]

bench_speed.py times the models in turns inside one process, where one model's allocations move glibc's mmap
threshold for the other's. A step here is bench_speed.py's (small shape, fused AdamW, our labelled-only output
layer; bf16 autocast with eager attention). "kept" sets mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 2^31 - 1):
no block is mapped fresh, none returned to the system, so a step reuses the memory of the step before.
"""

import argparse
import ctypes
import statistics
import subprocess
import sys
import time

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
MODELS, PRECISIONS, ALLOCATORS = ("ours", "marian"), ("float32", "bf16"), ("default", "kept")


def child(model: str, precision: str, allocator: str, steps: int) -> None:
    """Prints the median milliseconds of `steps` training steps after 3 warm-up steps."""
    if allocator == "kept":
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    import torch
    from bench_speed import SHAPES, autocast_context, bench_inputs, build_marian, build_ours, training_step

    torch.set_num_threads(2)
    shape = SHAPES["small"]
    batch, _ = bench_inputs(shape)
    torch.manual_seed(0)
    network = (build_ours if model == "ours" else build_marian)(shape).train()
    if precision == "bf16":
        network.set_attn_implementation("eager")  # as bench_speed.py's bf16 rows and train.py --bf16 on a CPU
    step = training_step(network, model, batch, autocast_context(torch.device("cpu"), precision == "bf16"))
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(f"{statistics.median(times) * 1000:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "PRECISION", "ALLOCATOR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.steps)
        return
    results = {}
    for round_ in range(args.rounds):
        models = MODELS if round_ % 2 == 0 else MODELS[::-1]  # ABBA over the rounds
        for precision in PRECISIONS:
            for model in models:
                for allocator in ALLOCATORS:
                    command = [sys.executable, __file__, "--steps", str(args.steps), "--child", model, precision]
                    output = subprocess.run([*command, allocator], capture_output=True, text=True, check=True)
                    milliseconds = float(output.stdout.split()[-1])
                    results.setdefault((precision, allocator), {}).setdefault(model, []).append(milliseconds)
                    print(f"round {round_ + 1}: {precision}, {model}, {allocator}: {milliseconds:.1f} ms", flush=True)
    print("\n| precision | allocator | ours ms (runs) | Marian ms (runs) | Marian / ours, medians |")
    print("|---|---|---|---|---|")
    for (precision, allocator), times in results.items():
        ours, marian = (statistics.median(times[model]) for model in MODELS)
        runs = {model: ", ".join(f"{value:.0f}" for value in times[model]) for model in MODELS}
        print(
            f"| {precision} | {allocator} | {ours:.0f} ({runs['ours']}) | {marian:.0f} ({runs['marian']}) "
            f"| {marian / ours:.2f}x |"
        )


if __name__ == "__main__":
    main()
