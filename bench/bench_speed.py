"""Speed of VanillaForConditionalGeneration against transformers' MarianMTModel (and torch.nn.Transformer on GPU).

On CPU the rows are float32, plus training rows of both models in bf16 autocast with eager attention, as train.py
--bf16 trains there, where the CPU has bf16 kernels (AVX-512 BF16 / AMX; without them train.py trains in float32,
and the bench leaves out its bf16 rows and says so in the notes). Every training row takes a step as
Trainer does: our model projects only the labelled positions onto the vocabulary (VanillaTrainer passes that mask as
`logits_to_keep`; MarianMTModel has no such argument), and the optimizer is fused AdamW, Trainer's default.

Decoding rows add both models converted to CTranslate2 (ours with vanilla_ctranslate2's spec, Marian with
ctranslate2's own TransformersConverter), our model in bf16 (eval.py --dtype bfloat16; on CUDA Marian too), and our
compiled static-cache decoding (on CUDA by default, there in bf16; eval.py --compile's mode, reduce-overhead: CUDA
graphs, or default where those fail).

On a GPU every model runs the attention kernels train.py and eval.py choose: SDPA without cuDNN's (which builds a
plan for each new shape) unless TORCH_CUDNN_SDPA_PREFERRED=1.

Same shapes, same random inputs, one process; the models take turns (ours, Marian, Marian, ours, ...) after a
warm-up, and each row is the median over the repeats, so load from other processes hits both alike.

Each engine runs once before a row is timed: one that raises (a CTranslate2 wheel built for another CUDA version, a
compiler error) is left out of that row and named in the notes, and the other engines' rows still run. The compiled
decoding is timed only where, in float32, at least 90% of its sequences are the dynamic cache's tokens (the share is
in the notes: generated code rounds differently from eager kernels, which can flip a near-tie of a random model).
The beam-4 row, the decoding target's, comes first.

The project's modules come from its installation (make setup installs it editable).

    python bench/bench_speed.py                    # CPU, small shape (vocab 8000, 256/4/1024, 3+3 layers)
    python bench/bench_speed.py --no-bf16          # CPU, float32 rows only
    python bench/bench_speed.py --compile          # CPU, plus torch.compile training rows (ours and Marian)
    python bench/bench_speed.py --every-position   # plus ours projecting every position (no labelled-only mask)
    python bench/bench_speed.py --device cuda      # GPU, base shape (vocab 32000, 512/8/2048, 6+6), bf16 autocast
    python bench/bench_speed.py --json rows.json   # the table's rows also as JSON (rewritten after each row)
"""

import argparse
import contextlib
import copy
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402
from transformers import GenerationConfig, MarianConfig, MarianMTModel, PreTrainedTokenizerFast  # noqa: E402

from configuration_vanilla import BOS_TOKEN_ID, EOS_TOKEN_ID, PAD_TOKEN_ID, PRESETS  # noqa: E402
from modeling_vanilla import (  # noqa: E402
    VanillaConfig,
    VanillaForConditionalGeneration,
    label_smoothed_cross_entropy,
    shift_tokens_right,
    sinusoidal_positions,
)
from vanilla_cli import avoid_cudnn_attention, cpu_has_bf16_kernels, first_line  # noqa: E402
from vanilla_ctranslate2 import model_spec, share_per_replica, translator  # noqa: E402
from vanilla_files import write_text_atomically  # noqa: E402
from vanilla_translation import COMPILED_DECODING, compile_for_decoding  # noqa: E402

PAD, BOS, EOS = PAD_TOKEN_ID, BOS_TOKEN_ID, EOS_TOKEN_ID
# The special ids of every model and generation config here: configuration_vanilla's, which VanillaConfig defaults to.
SPECIAL_IDS = dict(pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=BOS)
PEERS = ["ours", "marian", "nn.Transformer"]  # nn.Transformer on CUDA only
LABEL_SMOOTHING = 0.1  # sec. 5.4, in every model's loss


@dataclass
class Shape:
    """A preset of configuration_vanilla.PRESETS (both stacks of its encoder depth) and the benchmark's batches."""

    preset: str
    vocab_size: int
    train_batch: int
    train_len: int
    gen_batch: int
    gen_len: int
    new_tokens: int

    def __post_init__(self):
        values = PRESETS[self.preset]
        self.d_model, self.num_heads, self.d_ff = values["d_model"], values["num_heads"], values["d_ff"]
        self.layers = values["encoder_layers"]


SHAPES = {
    name: Shape(name, vocab_size, train_batch=batch, train_len=length, gen_batch=gen, gen_len=length, new_tokens=length)
    for name, vocab_size, batch, gen, length in (("small", 8000, 32, 16, 24), ("base", 32000, 128, 64, 64))
}
SHAPES["tiny"] = Shape("tiny", 1000, train_batch=8, train_len=16, gen_batch=4, gen_len=12, new_tokens=12)  # dry runs


def build_ours(shape: Shape) -> VanillaForConditionalGeneration:
    config = VanillaConfig.from_preset(
        shape.preset,
        vocab_size=shape.vocab_size,
        dropout=0.1,
        label_smoothing=LABEL_SMOOTHING,
        attn_implementation="sdpa",
    )
    return VanillaForConditionalGeneration(config)


def build_marian(shape: Shape) -> MarianMTModel:
    config = MarianConfig(
        vocab_size=shape.vocab_size,
        decoder_vocab_size=shape.vocab_size,
        d_model=shape.d_model,
        encoder_attention_heads=shape.num_heads,
        decoder_attention_heads=shape.num_heads,
        encoder_ffn_dim=shape.d_ff,
        decoder_ffn_dim=shape.d_ff,
        encoder_layers=shape.layers,
        decoder_layers=shape.layers,
        activation_function="relu",
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        max_position_embeddings=512,
        **SPECIAL_IDS,
        forced_eos_token_id=None,
        attn_implementation="sdpa",
    )
    return MarianMTModel(config)


class TorchTransformer(nn.Module):
    """torch.nn.Transformer with the same shapes: tied, scaled embeddings plus sinusoids, and a tied output layer."""

    def __init__(self, shape: Shape):
        super().__init__()
        self.d_model = shape.d_model
        self.embed = nn.Embedding(shape.vocab_size, shape.d_model, padding_idx=PAD)
        self.transformer = nn.Transformer(
            shape.d_model,
            shape.num_heads,
            shape.layers,
            shape.layers,
            shape.d_ff,
            dropout=0.1,
            batch_first=True,
        )
        self.lm_head = nn.Linear(shape.d_model, shape.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight

    def embed_with_positions(self, ids: torch.Tensor) -> torch.Tensor:
        positions = sinusoidal_positions(torch.arange(ids.shape[1], device=ids.device), self.d_model)
        return self.embed(ids) * math.sqrt(self.d_model) + positions

    def forward(self, input_ids, attention_mask, decoder_input_ids) -> torch.Tensor:
        causal = nn.Transformer.generate_square_subsequent_mask(decoder_input_ids.shape[1], device=input_ids.device)
        hidden = self.transformer(
            self.embed_with_positions(input_ids),
            self.embed_with_positions(decoder_input_ids),
            tgt_mask=causal,
            tgt_is_causal=True,
            src_key_padding_mask=attention_mask == 0,
            memory_key_padding_mask=attention_mask == 0,
        )
        return self.lm_head(hidden)


def random_batch(batch: int, length: int, vocab_size: int, generator: torch.Generator) -> tuple:
    """Token ids with lengths drawn from [length / 2, length], right-padded, and the matching attention mask."""
    ids = torch.randint(3, vocab_size, (batch, length), generator=generator)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids[:, -1] = EOS
    ids = torch.where(mask.bool(), ids, PAD)
    ids[torch.arange(batch), lengths - 1] = EOS
    return ids, mask


def bench_inputs(shape: Shape, device: torch.device | str = "cpu") -> tuple[dict, dict]:
    """The training batch (labels -100 at the padding) and the decoding sources, drawn from seed 0 in this order:
    every bench script times the same inputs."""
    generator = torch.Generator().manual_seed(0)
    input_ids, attention_mask = random_batch(shape.train_batch, shape.train_len, shape.vocab_size, generator)
    labels, label_mask = random_batch(shape.train_batch, shape.train_len, shape.vocab_size, generator)
    gen_ids, gen_mask = random_batch(shape.gen_batch, shape.gen_len, shape.vocab_size, generator)
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels.masked_fill(label_mask == 0, -100),
    }
    source = {"input_ids": gen_ids, "attention_mask": gen_mask}
    return ({name: tensor.to(device) for name, tensor in inputs.items()} for inputs in (batch, source))


def training_step(
    model: nn.Module, kind: str, batch: dict, autocast: Callable, every_position: bool = False
) -> Callable[[], None]:
    """One full step as Trainer takes it: forward, label-smoothed loss (our model's own, for the peers that only return
    logits), backward, fused AdamW (Trainer's default optimizer). Ours projects only the labelled positions onto the
    vocabulary, as VanillaTrainer asks of it (`every_position`: all of them, as a compiled VanillaTrainer step does)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    decoder_input_ids = shift_tokens_right(batch["labels"], PAD, BOS)
    logits_to_keep = 0 if every_position else batch["labels"] != -100

    def step():
        with autocast():
            if kind == "ours":
                loss = model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    labels=batch["labels"],
                    logits_to_keep=logits_to_keep,
                ).loss
            elif kind == "marian":
                logits = model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    decoder_input_ids=decoder_input_ids,
                ).logits
                loss = label_smoothed_cross_entropy(logits, batch["labels"], LABEL_SMOOTHING)
            else:
                logits = model(batch["input_ids"], batch["attention_mask"], decoder_input_ids)
                loss = label_smoothed_cross_entropy(logits, batch["labels"], LABEL_SMOOTHING)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def generation_call(
    model: nn.Module, source: dict, num_beams: int, new_tokens: int, autocast: Callable, **generation_settings
):
    config = GenerationConfig(
        num_beams=num_beams,
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        length_penalty=1.0,
        early_stopping=False,
        use_cache=True,
        **SPECIAL_IDS,
        **generation_settings,
    )

    def call():
        with torch.no_grad(), autocast():
            out = model.generate(**source, generation_config=config)
        assert out.shape[1] == new_tokens + 1, f"expected {new_tokens} new tokens, got {out.shape[1] - 1}"

    return call


# Below this share of sequences equal to the dynamic cache's, the compiled decoding is wrong, not rounded differently:
# generated code rounds float32 differently from eager kernels, which flips a near-tie of a random model's logits in
# a sequence now and then, while a wrong cache or mask changes nearly every sequence from its second token on.
MIN_TOKEN_AGREEMENT = 0.9


def sequence_agreement(expected: torch.Tensor, output: torch.Tensor) -> float:
    """The share of rows (generated sequences) that are the same tokens in both, padding after the end aside."""
    length = max(expected.shape[1], output.shape[1])
    expected, output = (nn.functional.pad(ids, (0, length - ids.shape[1]), value=PAD) for ids in (expected, output))
    return int((expected == output).all(dim=1).sum()) / expected.shape[0]


def compiled_token_agreement(model: nn.Module, compiled: nn.Module, source: dict, new_tokens: int) -> dict[str, float]:
    """eval.py --compile's promise, in float32: the share of sequences the compiled static-cache decoding emits as the
    dynamic cache does, greedy and beam 4."""
    agreement = {}
    for label, num_beams in (("greedy", 1), ("beam 4", 4)):
        arguments = {"num_beams": num_beams, "max_new_tokens": new_tokens, "do_sample": False}
        with torch.no_grad():
            expected = model.generate(**source, **arguments)
            output = compiled.generate(**source, **arguments, **COMPILED_DECODING)
        agreement[label] = sequence_agreement(expected, output)
    return agreement


def compiled_decoding_check(model: nn.Module, compiled: nn.Module, source: dict, new_tokens: int) -> tuple:
    """compiled_token_agreement (None where the compiled decoding raised: a compiler error costs only its own rows),
    a note that says it, and whether the compiled decoding is to be timed."""
    try:
        agreement = compiled_token_agreement(model, compiled, source, new_tokens)
    except Exception as error:  # noqa: BLE001
        return None, f"no ours, compiled static rows ({first_line(error)})", False
    note = "compiled static-cache decoding, float32: " + ", ".join(
        f"{share:.1%} of the sequences the dynamic cache's ({label})" for label, share in agreement.items()
    )
    timed = min(agreement.values()) >= MIN_TOKEN_AGREEMENT
    if not timed:
        note += f"; below {MIN_TOKEN_AGREEMENT:.0%}: wrong, not rounded differently, so not timed"
    return agreement, note, timed


def compiled_static_decoder(
    model: nn.Module,
    source: dict,
    new_tokens: int,
    autocast: Callable,
    backend: str,
    modes: list[str | None],
    dtype: torch.dtype | None = None,
) -> tuple:
    """eval.py --compile's decoding of `model` (static cache, the forward compiled) in the first of `modes` that
    passes compiled_decoding_check and decodes as the timed rows will: under `autocast`, or with its weights in `dtype`
    (eval.py --compile --dtype) where one is given. On a GPU reduce-overhead (CUDA graphs, eval.py's default), then
    default (no CUDA graphs) should that fail. (the compiled model or None, the mode, its agreement, notes)."""
    agreement, notes = None, []
    for mode in modes:
        static = copy.deepcopy(model)
        compile_for_decoding(static, mode, backend)
        agreement, note, timed = compiled_decoding_check(model, static, source, new_tokens)
        notes.append(f"mode {mode}: {note}" if mode else note)
        print(notes[-1], flush=True)
        if timed:
            if dtype is not None:
                static.to(dtype)
                autocast = contextlib.nullcontext
            call = generation_call(static, source, 4, new_tokens, autocast, **COMPILED_DECODING)
            if working({"ours, compiled static": call}, f"beam-4 sent/s, mode {mode}", notes):
                return static, mode, agreement, notes
    return None, None, agreement, notes


def compile_modes(device: torch.device, backend: str) -> list[str | None]:
    """The modes compiled_static_decoder tries: reduce-overhead (eval.py --compile's), then on a GPU default (no CUDA
    graphs) should that fail; a backend other than inductor, whose modes these are, takes none (None)."""
    if backend != "inductor":
        return [None]
    return ["reduce-overhead", "default"] if device.type == "cuda" else ["reduce-overhead"]


def bench_tokens(vocab_size: int) -> list[str]:
    """Token strings for CTranslate2, which speaks tokens, not ids: the special ones, then placeholders."""
    return ["<pad>", "<s>", "</s>", *(f"<t{index}>" for index in range(3, vocab_size))]


def ctranslate2_models(models: dict, shape: Shape, folder: str, device: torch.device, quantizations) -> tuple:
    """Ours through our spec, Marian through ctranslate2's TransformersConverter on the saved MarianMTModel: the
    translators that translate on this device, and a note for each that does not (a wheel built for another CUDA
    version loads its libraries only when it first computes), so that one engine's failure costs only its own rows."""
    from ctranslate2.converters import TransformersConverter
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    tokens = bench_tokens(shape.vocab_size)
    marian_dir = os.path.join(folder, "marian")
    models["marian"].save_pretrained(marian_dir)
    # Marian's converter expects its own layout, the padding token last (it drops that row: Marian starts the
    # decoder from a zero embedding instead); source tokens missing from it (id vocab_size - 1) read as unknown.
    marian_tokens = ["<unused>", *tokens[1:-1], "<pad>"]
    word_level = WordLevel({token: index for index, token in enumerate(marian_tokens)}, unk_token="<t3>")
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(word_level), pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<t3>"
    ).save_pretrained(marian_dir)

    def ours(quantization: str) -> str:
        ours_dir = os.path.join(folder, f"ours-{quantization}")
        os.makedirs(ours_dir)
        # A copy on the CPU: quantizing the spec rewrites its arrays in place, which would be our model's own
        # parameters, and CTranslate2 reads a spec's tensors through NumPy or their host address, which a GPU's lack.
        weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in models["ours"].state_dict().items()}
        spec = model_spec(models["ours"].config, weights, tokens)
        spec.validate()
        spec.optimize(quantization=quantization)
        spec.save(ours_dir)
        return ours_dir

    def marian(quantization: str) -> str:
        output = os.path.join(folder, f"marian-{quantization}")
        return TransformersConverter(marian_dir).convert(output, quantization=quantization)

    translators, notes = {}, []
    for quantization in quantizations:
        for name, convert in (("ours", ours), ("marian", marian)):
            label = f"{name}, CT2 {quantization}"
            try:
                path = convert(quantization)
                translators[label] = translator(path, device.type, quantization, torch.get_num_threads())
            except Exception as error:  # noqa: BLE001 (the engine's own: a missing library, an unsupported type)
                notes.append(f"no {label} rows ({first_line(error)})")
    return translators, notes


def working(fns: dict[str, Callable[[], None]], row: str, notes: list[str]) -> dict[str, Callable[[], None]]:
    """The functions that run: each called once, and one that raises left out of `row` with its error in `notes`, so
    that one engine's failure (a CTranslate2 wheel built for another CUDA version loads its libraries only when it
    first computes; a compiler error) costs only its own place in the row, not the others'."""
    kept = {}
    for name, fn in fns.items():
        try:
            fn()
        except Exception as error:  # noqa: BLE001
            notes.append(f"{row}: no {name} ({first_line(error)})")
            print(notes[-1], flush=True)
            continue
        kept[name] = fn
    return kept


def ctranslate2_call(translator, tokens: list[str], source: dict, num_beams: int, new_tokens: int) -> Callable:
    """translate_batch on the same unpadded sources, with a fixed output length (min = max decoding length)."""
    batch = [
        [tokens[index] for index in ids[mask.bool()].tolist()]
        for ids, mask in zip(source["input_ids"].cpu(), source["attention_mask"].cpu(), strict=True)
    ]

    def call():
        results = translator.translate_batch(
            batch,
            beam_size=num_beams,
            length_penalty=1.0,
            max_decoding_length=new_tokens,
            min_decoding_length=new_tokens,
            max_batch_size=share_per_replica(translator, len(batch)),
        )
        lengths = {len(result.hypotheses[0]) for result in results}
        assert lengths == {new_tokens}, f"expected {new_tokens} new tokens, got {lengths}"

    return call


def autocast_context(device: torch.device, bf16: bool) -> Callable:
    """A fresh context per call: bf16 autocast on the device, or none (float32)."""
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def alternated_times(
    fns: dict[str, Callable[[], None]], device: torch.device, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds of each call of each function, run in turns (ABBA...) after warm-up: `repeats` a function."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    names = list(fns)
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            times[name].append(timed(fns[name], device))
    return times


def compare(fns: dict[str, Callable[[], None]], device: torch.device, warmup: int, repeats: int) -> dict:
    """Median seconds per call of each function, run in turns (ABBA...) after warm-up."""
    times = alternated_times(fns, device, warmup, repeats)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory(fn: Callable[[], None], device: torch.device) -> float | None:
    """Peak allocated GiB of one call on CUDA; None on CPU, where the allocator keeps no such count."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def training_flops(shape: Shape, src_len: int, tgt_len: int) -> float:
    """Matmul FLOPs of one training step per sentence (forward x 3): projections, attention scores, output layer."""
    d, d_ff, n = shape.d_model, shape.d_ff, shape.layers
    encoder = n * src_len * (2 * (4 * d * d + 2 * d * d_ff) + 4 * src_len * d)
    decoder = n * (
        tgt_len * (2 * (4 * d * d + 2 * d * d + 2 * d * d_ff) + 4 * tgt_len * d + 4 * src_len * d)
        + src_len * 2 * 2 * d * d  # cross-attention keys and values from the encoder output
    )
    output_layer = tgt_len * 2 * d * shape.vocab_size
    return 3 * (encoder + decoder + output_layer)


def bf16_matmul_peak(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """FLOP/s of a large bf16 matmul on this GPU, the ceiling MFU is measured against."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    seconds = timed(lambda: [a @ b for _ in range(repeats)], device)
    return 2 * size**3 * repeats / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="default: small on CPU, base on CUDA")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per model and row (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's own)")
    parser.add_argument(
        "--no-bf16", action="store_true", help="float32 only: on CUDA no bf16 autocast, on CPU no bf16 rows"
    )
    parser.add_argument("--compile", action="store_true", help="on CPU, add torch.compile rows (default on CUDA)")
    parser.add_argument("--no-compile", action="store_true", help="on CUDA, skip the torch.compile rows")
    parser.add_argument(
        "--compiled-models", nargs="+", choices=PEERS, default=PEERS, help="the models with compiled training rows"
    )
    parser.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend; eager traces the same graphs, quickly"
    )
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument(
        "--every-position",
        action="store_true",
        help="add a training row of ours projecting every position onto the vocabulary (the mask's share)",
    )
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--no-ctranslate2", action="store_true", help="skip the CTranslate2 decoding rows")
    parser.add_argument("--json", help="also write the rows to this JSON file, rewritten after each row")
    args = parser.parse_args()

    device = torch.device(args.device)
    avoid_cudnn_attention()  # the attention kernels train.py and eval.py run, for every model
    shape = SHAPES[args.shape or ("base" if device.type == "cuda" else "small")]
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = device.type == "cuda" and not args.no_bf16
    cpu_bf16 = device.type == "cpu" and not args.no_bf16  # bf16 rows beside the float32 ones
    setup_notes = []  # what the run leaves out before it starts, and why
    if cpu_bf16 and not cpu_has_bf16_kernels():  # without them a bf16 step takes ~30x a float32 one
        cpu_bf16 = False
        setup_notes.append(
            "no bf16 rows: this CPU has no bf16 matrix kernels (oneDNN's need AVX-512 or AMX); "
            "train.py --bf16 trains in float32 here"
        )
    compiled = (device.type == "cuda" or args.compile) and not args.no_compile
    autocast = autocast_context(device, bf16)

    train_batch, source = bench_inputs(shape, device)

    torch.manual_seed(0)
    models = {"ours": build_ours(shape).to(device), "marian": build_marian(shape).to(device)}
    if device.type == "cuda":
        models["nn.Transformer"] = TorchTransformer(shape).to(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"device {device} ({where}), "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{'bf16 autocast' if bf16 else 'float32'}; shape {shape}; {args.repeats} repeats after {args.warmup} warm-up",
        flush=True,
    )
    for name, model in models.items():
        print(f"  {name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
    for note in setup_notes:
        print(f"note: {note}", flush=True)

    rows = []  # (metric, {model: value})
    record = {
        "device": str(device),
        "device_name": where,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "precision": "bf16 autocast" if bf16 else "float32",
        "shape": {"name": args.shape or ("base" if device.type == "cuda" else "small"), **vars(shape)},
        "repeats": args.repeats,
        "warmup": args.warmup,
        "notes": list(setup_notes),
        "rows": {},
        "ratios": {},
    }

    def add_row(metric: str, values: dict) -> None:
        rows.append((metric, values))
        record["rows"][metric] = values
        record["ratios"][metric] = row_ratios(values)
        if args.json:
            write_text_atomically(Path(args.json), json.dumps(record, indent=2) + "\n")

    if not args.skip_training:
        positions = shape.train_batch * 2 * shape.train_len  # source + target, padding included
        real_tokens = int(train_batch["attention_mask"].sum() + train_batch["labels"].ne(-100).sum())  # train.py's
        train_fns = {name: training_step(model.train(), name, train_batch, autocast) for name, model in models.items()}
        if cpu_bf16:  # what train.py --bf16 does on a CPU: bf16 autocast, float32 weights, eager attention
            for name in ("ours", "marian"):  # both models on the same kernels: SDPA's bf16 backward is slow on CPUs
                eager = copy.deepcopy(models[name])
                eager.set_attn_implementation("eager")
                step = training_step(eager, name, train_batch, autocast_context(device, True))
                train_fns[f"{name}, bf16 autocast"] = step
        if args.every_position:  # ours without VanillaTrainer's mask, as a plain forward(labels=...) runs
            train_fns["ours, every position"] = training_step(
                models["ours"], "ours", train_batch, autocast, every_position=True
            )
        if compiled:  # what Trainer's --torch_compile does: torch.compile(model), default mode
            for name in (name for name in models if name in args.compiled_models):
                model = torch.compile(models[name], backend=args.compile_backend)
                train_fns[f"{name}, compiled"] = training_step(model, name, train_batch, autocast, every_position=True)
        train_fns = working(train_fns, "train tokens/s", record["notes"])
        seconds = compare(train_fns, device, args.warmup, args.repeats)
        add_row("train tokens/s", {name: positions / s for name, s in seconds.items()})
        add_row("train real tokens/s", {name: real_tokens / s for name, s in seconds.items()})
        if device.type == "cuda":
            add_row("train peak GiB", {name: peak_memory(fn, device) for name, fn in train_fns.items()})
            peak = bf16_matmul_peak(device)
            flops = shape.train_batch * training_flops(shape, shape.train_len, shape.train_len)
            add_row("train MFU %", {name: 100 * flops / s / peak for name, s in seconds.items()})
            print(f"bf16 matmul peak measured: {peak / 1e12:.0f} TFLOP/s", flush=True)
        else:
            add_row("train peak GiB", {name: None for name in train_fns})

    if not args.skip_generation:
        for model in models.values():
            model.eval()
        decoders = {name: (models[name], autocast, {}) for name in ("ours", "marian")}
        # eval.py --dtype bfloat16: the weights in bf16 (AVX-512 BF16 / AMX where present). On a GPU both models,
        # whose eager steps then launch no casts of the weights, and our compiled decoding too.
        decode_dtype = torch.bfloat16 if bf16 else None
        bf16_decoders = ["ours", "marian"] if bf16 else ["ours"] if cpu_bf16 else []
        for name in bf16_decoders:
            decoders[f"{name}, bf16"] = (copy.deepcopy(models[name]).to(torch.bfloat16), contextlib.nullcontext, {})
        if compiled:  # eval.py --compile: static cache, the decoding forward compiled
            static, mode, agreement, notes = compiled_static_decoder(
                models["ours"],
                source,
                shape.new_tokens,
                autocast,
                args.compile_backend,
                compile_modes(device, args.compile_backend),
                decode_dtype,
            )
            if static is not None:
                context = contextlib.nullcontext if decode_dtype else autocast
                decoders["ours, compiled static"] = (static, context, COMPILED_DECODING)
            record["compiled_token_agreement"] = agreement
            record["compiled_mode"] = mode
            record["notes"] += notes
        translators = {}
        folder = tempfile.TemporaryDirectory()
        ctranslate2 = None
        if not args.no_ctranslate2:
            try:
                import ctranslate2
            except (ImportError, OSError) as error:  # a wheel built against libraries this machine lacks
                record["notes"].append(f"no CTranslate2 rows: importing ctranslate2 failed ({first_line(error)})")
        if ctranslate2 is not None:
            if device.type == "cpu" or ctranslate2.get_cuda_device_count() > 0:
                quantizations = ("float32", "int8") if device.type == "cpu" else ("bfloat16", "int8_bfloat16")
                translators, notes = ctranslate2_models(models, shape, folder.name, device, quantizations)
                record["notes"] += notes
            else:
                record["notes"].append(
                    f"no CTranslate2 rows: ctranslate2 {ctranslate2.__version__} sees no CUDA device"
                )
        tokens = bench_tokens(shape.vocab_size)
        for label, beams in (("beam-4 sent/s", 4), ("greedy sent/s", 1)):  # the target's row first
            gen_fns = {
                name: generation_call(model, source, beams, shape.new_tokens, context, **extra)
                for name, (model, context, extra) in decoders.items()
            }
            for name, translator in translators.items():
                gen_fns[name] = ctranslate2_call(translator, tokens, source, beams, shape.new_tokens)
            gen_fns = working(gen_fns, label, record["notes"])
            seconds = compare(gen_fns, device, args.warmup, args.repeats)
            add_row(label, {name: shape.gen_batch / s for name, s in seconds.items()})
        folder.cleanup()

    columns = list(dict.fromkeys(name for _, values in rows for name in values))
    print_table(rows, columns)


RATIOS = [  # (a, b): a's value over b's, in each row that has both
    ("ours", "marian"),
    ("ours", "ours, every position"),
    ("ours, every position", "marian"),
    ("ours, bf16 autocast", "marian, bf16 autocast"),
    ("ours, bf16", "marian"),
    ("ours, compiled static", "marian"),
    ("ours, bf16", "marian, bf16"),
    ("ours, compiled static", "marian, bf16"),
    ("ours, CT2 float32", "marian"),
    ("ours, CT2 int8", "marian"),
    ("ours, CT2 float32", "marian, CT2 float32"),
    ("ours, CT2 int8", "marian, CT2 int8"),
    ("ours, CT2 bfloat16", "marian"),
    ("ours, CT2 bfloat16", "marian, CT2 bfloat16"),
    ("ours, CT2 int8_bfloat16", "marian, CT2 int8_bfloat16"),
    ("ours", "nn.Transformer"),
    ("ours, compiled", "marian"),
    ("ours, compiled", "marian, compiled"),
    ("ours, compiled", "nn.Transformer, compiled"),
]


def row_ratios(values: dict) -> dict[str, float]:
    """RATIOS' quotients ("a / b") in one row, where the row has both values."""
    return {f"{a} / {b}": values[a] / values[b] for a, b in RATIOS if values.get(a) and values.get(b)}


def print_table(rows: list, columns: list[str]):
    ratios = [f"{a} / {b}" for a, b in RATIOS if a in columns and b in columns]
    header = ["metric", *columns, *ratios]
    lines = []
    for metric, values in rows:
        cells = [metric]
        for name in columns:
            value = values.get(name)
            cells.append("-" if value is None else f"{value:,.1f}" if value < 100 else f"{value:,.0f}")
        quotients = row_ratios(values)
        cells += ["-" if name not in quotients else f"{quotients[name]:.2f}x" for name in ratios]
        lines.append(cells)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cells in lines:
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
