"""Where our model spends its time: torch.profiler tables for a training step and for beam-4 generation.

    python bench/profile_speed.py [--model marian] [--bf16] [--rows 25] [--threads 2] [--skip-generation]
    python bench/profile_speed.py --device cuda    # base shape, bf16 autocast, plus the compiled step and decoding
    python bench/profile_speed.py --compile        # CPU, plus the compiled step and decoding (--compile-backend)

Uses bench_speed.py's inputs (the small shape on CPU, the base shape on CUDA; --shape picks another). Each profiled
call gets one summary line: its wall time, and on CUDA the time its kernels kept the GPU busy (the sum of their
device times), the share of the wall time that is, and the kernels it ran (those a CUDA graph replays included).
A step whose GPU is busy a small share of its wall time is bound by the host (Python, dispatch, launches, waits for
the GPU), not by the arithmetic. Then the operators, sorted by self CPU time, or on CUDA by self device time; and for
each generation, the host time a decoding step spends in each of its parts: the model's forward, transformers'
beam-search helpers, the logits processors, the cache reorder. On a GPU `_beam_search_has_unfinished_sequences` reads
a flag back from the GPU, so its time includes the wait for the step's kernels.

On CUDA it first times a training step at batch shapes met for the first time against the same shapes again, with
SDPA free to use cuDNN's attention and without it (`--new-shapes N`): what each new shape of token-budget batches
costs. On CUDA (on CPU with --compile) the training step also runs compiled, and the decoding as bench_speed.py's:
eager under autocast, then eval.py --compile's (static cache, the decoding step compiled, in bf16 weights).
"""

import argparse
import contextlib
import functools
import inspect
import time

import torch
from bench_speed import (  # the script's folder is on the path
    SHAPES,
    autocast_context,
    bench_inputs,
    build_marian,
    build_ours,
    compile_modes,
    compiled_static_decoder,
    generation_call,
    random_batch,
    training_step,
)
from torch.profiler import ProfilerActivity, profile, record_function
from transformers.generation import LogitsProcessorList, StoppingCriteriaList

from vanilla_cli import avoid_cudnn_attention
from vanilla_translation import COMPILED_DECODING


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kernel_summary(events, calls: int) -> tuple[float, int]:
    """The device seconds and kernels per call, from the profile's events that ran on the GPU."""
    kernels = [event for event in events if event.device_type == torch.autograd.DeviceType.CUDA]
    seconds = sum(event.self_device_time_total for event in kernels) / 1e6
    return seconds / calls, sum(event.count for event in kernels) // calls


# The parts of a decoding step: transformers' beam-search helpers (GenerationMixin) and the model's cache reorder.
STEP_PARTS = (
    "prepare_inputs_for_generation",
    "_update_model_kwargs_for_generation",
    "_get_top_k_continuations",
    "_get_running_beams_for_next_iteration",
    "_update_finished_beams",
    "_check_early_stop_heuristic",
    "_beam_search_has_unfinished_sequences",
    "_reorder_cache",
)


@contextlib.contextmanager
def step_parts(model):
    """Marks the model's forward, STEP_PARTS, the logits processors and the stopping criteria as profiler ranges
    named `part: <name>` while the block runs."""
    undo = []

    def mark(owner, name: str, label: str) -> None:
        if not hasattr(owner, name):  # a helper this transformers version does not have
            return
        found = owner.__dict__.get(name)
        function = getattr(owner, name)

        @functools.wraps(function)
        def marked(*args, **kwargs):
            with record_function(f"part: {label}"):
                return function(*args, **kwargs)

        static = isinstance(owner, type) and isinstance(inspect.getattr_static(owner, name), staticmethod)
        setattr(owner, name, staticmethod(marked) if static else marked)
        undo.append((owner, name, found))

    mark(model, "forward", "forward")
    for name in STEP_PARTS:
        mark(type(model), name, name)
    mark(LogitsProcessorList, "__call__", "logits processors")
    mark(StoppingCriteriaList, "__call__", "stopping criteria")
    try:
        yield
    finally:
        for owner, name, found in reversed(undo):
            if found is None:
                delattr(owner, name)
            else:
                setattr(owner, name, found)


def step_table(events, wall: float) -> str:
    """Host time a decoding step spends in each part (one forward call a step), and outside them all."""
    parts = {event.key.removeprefix("part: "): event for event in events if event.key.startswith("part: ")}
    steps = parts["forward"].count
    lines = [f"{'part of a decoding step':45} {'calls':>6} {'host us a step':>15}"]
    for name, event in sorted(parts.items(), key=lambda item: -item[1].cpu_time_total):
        lines.append(f"{name:45} {event.count / steps:6.1f} {event.cpu_time_total / steps:15.1f}")
    outside = wall * 1e6 - sum(event.cpu_time_total for event in parts.values())
    lines.append(f"{'(outside these: the loop, log-softmax, ...)':45} {'':6} {outside / steps:15.1f}")
    return "\n".join(lines)


def show(title: str, fn, rows: int, calls: int, device: torch.device, parts_of=None) -> None:
    """Profiles `calls` calls of fn after one unprofiled call; prints the summary line and the operator table, and
    for a generation (parts_of: its model) the host time of each part of a decoding step."""
    fn()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    marks = step_parts(parts_of) if parts_of is not None else contextlib.nullcontext()
    with marks, profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        wall = (time.perf_counter() - start) / calls
    events = prof.key_averages()
    line = f"{wall * 1e3:.1f} ms a call (wall)"
    if device.type == "cuda":
        busy, kernels = kernel_summary(events, calls)
        line += f", GPU busy {busy * 1e3:.1f} ms ({busy / wall:.0%} of it), {kernels} kernels"
    print(f"\n=== {title} ({calls} calls): {line} ===")
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=sort_by, row_limit=rows, max_name_column_width=60))
    if parts_of is not None:
        print(step_table(events, wall * calls))


def new_shape_batches(shape, count: int, offset: int, device: torch.device) -> list[dict]:
    """`count` training batches of shapes no other call used (rows, source and target lengths all differ), as
    token-budget batches bring at nearly every step of a first epoch."""
    generator = torch.Generator().manual_seed(offset)
    batches = []
    for index in range(count):
        rows, length = shape.train_batch + offset + index, shape.train_len + offset + index
        input_ids, attention_mask = random_batch(rows, length, shape.vocab_size, generator)
        labels, label_mask = random_batch(rows, length + 1, shape.vocab_size, generator)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels.masked_fill(label_mask == 0, -100),
        }
        batches.append({name: tensor.to(device) for name, tensor in batch.items()})
    return batches


def new_shape_cost(model, shape, device: torch.device, autocast, count: int) -> None:
    """The time a training step's forward and backward take at a batch shape seen for the first time, and again at
    once (medians): the cost a new shape carries, with SDPA free to choose cuDNN's attention (which builds a plan per
    shape, forward and backward) and without it (train.py's choice). Each setting gets shapes of its own."""

    def step(batch: dict) -> float:
        synchronize(device)
        start = time.perf_counter()
        with autocast():
            loss = model(**batch, logits_to_keep=batch["labels"] != -100).loss
        loss.backward()
        synchronize(device)
        return time.perf_counter() - start

    print(f"\n=== a training step at a new batch shape ({count} shapes each; forward and backward, ms) ===")
    print(f"{'SDPA may use cuDNN':20} {'first call':>11} {'same shape again':>17} {'cost of the new shape':>22}")
    allowed = torch.backends.cuda.cudnn_sdp_enabled()
    step(new_shape_batches(shape, 1, 0, device)[0])  # the process's first step (its one-off set-up) is not timed
    model.zero_grad(set_to_none=True)
    for offset, cudnn in ((0, True), (count, False)):
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        first, again = [], []
        for batch in new_shape_batches(shape, count, offset + 1, device):
            first.append(step(batch))
            again.append(step(batch))
            model.zero_grad(set_to_none=True)
        median = sorted(first)[count // 2], sorted(again)[count // 2]
        print(f"{str(cudnn):20} {median[0] * 1e3:11.1f} {median[1] * 1e3:17.1f} {(median[0] - median[1]) * 1e3:22.1f}")
    torch.backends.cuda.enable_cudnn_sdp(allowed)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["ours", "marian"], default="ours")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="default: small on CPU, base on CUDA")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3, help="profiled calls of each")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on CPU (always on CUDA)")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--compile", action="store_true", help="on CPU, the compiled step and decoding too")
    parser.add_argument("--no-compile", action="store_true", help="on CUDA, no compiled training step or decoding")
    parser.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend; eager traces the same graphs, quickly"
    )
    parser.add_argument(
        "--new-shapes", type=int, default=None, help="batch shapes timed at their first call (default: 6 on CUDA, 0)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    avoid_cudnn_attention()  # bench_speed.py's kernels, train.py's and eval.py's
    shape = SHAPES[args.shape or ("base" if device.type == "cuda" else "small")]
    batch, source = bench_inputs(shape, device)
    autocast = autocast_context(device, args.bf16 or device.type == "cuda")
    print(f"{args.model} on {device}, torch {torch.__version__}, shape {shape}", flush=True)

    torch.manual_seed(0)
    model = (build_ours if args.model == "ours" else build_marian)(shape).to(device)
    new_shapes = (6 if device.type == "cuda" else 0) if args.new_shapes is None else args.new_shapes
    if new_shapes and args.model == "ours":  # first, before any other call has met a shape
        new_shape_cost(model.train(), shape, device, autocast, new_shapes)
    show("training step", training_step(model.train(), args.model, batch, autocast), args.rows, args.steps, device)
    compiled = (device.type == "cuda" or args.compile) and not args.no_compile  # as bench_speed.py's rows
    if compiled:  # bench_speed.py's compiled row: Trainer's --torch_compile
        model_compiled = torch.compile(model, backend=args.compile_backend)
        step = training_step(model_compiled, args.model, batch, autocast, every_position=True)
        show("training step, compiled", step, args.rows, args.steps, device)
    if args.skip_generation:
        return
    model.eval()
    decoding = generation_call(model, source, 4, shape.new_tokens, autocast)
    show("beam-4 generation", decoding, args.rows, args.steps, device, parts_of=model)
    if compiled and args.model == "ours":
        modes = compile_modes(device, args.compile_backend)
        static, mode, _, notes = compiled_static_decoder(
            model, source, shape.new_tokens, autocast, args.compile_backend, modes, torch.bfloat16
        )
        if static is None:
            print("\n".join(notes))
            return
        decoding = generation_call(static, source, 4, shape.new_tokens, contextlib.nullcontext, **COMPILED_DECODING)
        title = f"beam-4 generation, compiled static, bf16 ({mode or args.compile_backend})"
        show(title, decoding, args.rows, args.steps, device, parts_of=static)


if __name__ == "__main__":
    main()
