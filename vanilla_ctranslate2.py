"""Translation with CTranslate2: a saved VanillaForConditionalGeneration converted through ctranslate2's specs API.

The conversion reads the saved weights by name (model.safetensors), fills a `ctranslate2.specs.TransformerSpec` as
ctranslate2's own converters do for Marian, and caches the result beside the model in `ctranslate2-<quantization>/`,
converted again when the weights, config or tokenizer change.

Beam search normalises the same way in both engines: a finished hypothesis scores
sum(log p) / length ** length_penalty, the length counting the generated tokens including the end token and
excluding the decoder start token (transformers' `BeamSearchScorer`/`_beam_search` and CTranslate2's
`length_penalty`; tests/test_ctranslate2.py checks the scores agree).
"""

import errno
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vanilla_cli import UsageError, first_line
from vanilla_files import hub_revision, locked, read_json, sha256_of, write_folder_atomically

if TYPE_CHECKING:
    import ctranslate2
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerBase

    from configuration_vanilla import VanillaConfig

INSTALL_HINT = "pip install ctranslate2 (or pip install .[fast])"
# CTranslate2's weight types (ctranslate2.converters.converter.ACCEPTED_MODEL_TYPES).
QUANTIZATIONS = ("float32", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16")
# transformers' activation names -> CTranslate2's (ctranslate2.converters.transformers._SUPPORTED_ACTIVATIONS).
ACTIVATIONS = {
    "relu": "RELU",
    "gelu": "GELU",
    "gelu_new": "GELUTanh",
    "gelu_pytorch_tanh": "GELUTanh",
    "gelu_fast": "GELUTanh",
    "quick_gelu": "GELUSigmoid",
    "silu": "SWISH",
    "swish": "SWISH",
    "tanh": "Tanh",
}
LAYER_NORM_EPSILON = 1e-5  # nn.LayerNorm's default, which every norm of the model uses
SOURCE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
CONVERSION_PREFIX = "ctranslate2-"  # a model's cached conversions: <model>/ctranslate2-<quantization>/
SOURCE_RECORD = "source.json"  # in each: the fingerprint of the SOURCE_FILES it was converted from
CONVERTED_DIGESTS = "converted_sha256"  # and the SHA-256 of each file converted: one damaged since is converted again
CONVERSION_FORMAT = "2"  # 2: sinusoids for SINUSOID_POSITIONS (1: for max_position_embeddings)
SINUSOID_POSITIONS = 2048


def translator(path: str | Path, device: str, compute_type: str, threads: int) -> "ctranslate2.Translator":
    """A Translator; on CPU one single-threaded replica per thread, each decoding its share of a batch in parallel.

    For batches of short sentences CTranslate2's parallel replicas (inter_threads) outrun one replica using every
    thread (intra_threads): its per-step matrix products are too small to split well (BENCHMARKS.md). Left at 0,
    intra_threads gives each replica several OpenMP threads of its own, which oversubscribes the cores. Building the
    replicas sets the calling thread's OpenMP thread count to intra_threads, and torch shares that count: it is put
    back, or the caller's torch work would go on on one thread.
    """
    import torch

    ctranslate2 = import_ctranslate2()
    if device != "cpu":
        return ctranslate2.Translator(str(path), device=device, compute_type=compute_type)
    torch_threads = torch.get_num_threads()
    replicas = ctranslate2.Translator(
        str(path), device=device, compute_type=compute_type, inter_threads=threads, intra_threads=1
    )
    torch.set_num_threads(torch_threads)
    return replicas


def share_per_replica(translator: "ctranslate2.Translator", batch_size: int) -> int:
    """translate_batch's max_batch_size that hands each replica an equal share of a batch."""
    return -(-batch_size // translator.num_translators)


def import_ctranslate2():
    """The ctranslate2 module, or a UsageError saying how to install it (it is an optional dependency)."""
    try:
        import ctranslate2
    except (ImportError, OSError) as error:
        if isinstance(error, ModuleNotFoundError) and error.name == "ctranslate2":
            raise UsageError(f"--engine ctranslate2 needs the ctranslate2 package: {INSTALL_HINT}") from None
        # Installed, and one of its own imports or the libraries its wheel was built against are missing.
        raise UsageError(f"ctranslate2 is installed but cannot be imported: {first_line(error)}") from None
    return ctranslate2


def vocabulary(tokenizer: "PreTrainedTokenizerBase", vocab_size: int) -> list[str]:
    """The tokenizer's tokens in id order, one per row of the embedding matrix (unused rows get placeholders)."""
    tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])][:vocab_size]
    taken = set(tokens)
    for row in range(len(tokens), vocab_size):
        placeholder = f"<unused{row}>"
        while placeholder in taken:
            placeholder = f"<{placeholder}>"
        tokens.append(placeholder)
    return tokens


def load_weights(folder: Path) -> dict[str, "torch.Tensor"]:
    """The saved state dict, by name (one model.safetensors file or the shards of model.safetensors.index.json)."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {name: tensor for shard in shards for name, tensor in load_file(folder / shard).items()}
    if not (folder / "model.safetensors").is_file():
        raise UsageError(f"{folder}: no model.safetensors to convert to CTranslate2")
    return load_file(folder / "model.safetensors")


def embedding_weights(config: "VanillaConfig", weights: dict) -> dict[str, "torch.Tensor"]:
    """Encoder input, decoder input and pre-softmax matrices; tied (sec. 3.4), one matrix whichever name was saved."""
    names = {
        "encoder": "model.encoder.embed_tokens.weight",
        "decoder": "model.decoder.embed_tokens.weight",
        "output": "lm_head.weight",
    }
    if config.tie_word_embeddings:
        # Tied weights may be saved once, under the shared module's name or under any of the tied ones.
        saved = [name for name in ("model.shared.weight", *names.values()) if name in weights]
        if not saved:
            raise UsageError(
                f"the checkpoint has no embedding matrix (none of model.shared.weight, {', '.join(names.values())})"
            )
        return dict.fromkeys(names, weights[saved[0]])
    missing = [name for name in names.values() if name not in weights]
    if missing:
        raise UsageError(f"the untied checkpoint lacks {', '.join(missing)}")
    return {side: weights[name] for side, name in names.items()}


def model_spec(config: "VanillaConfig", weights: dict, tokens: list[str]) -> "ctranslate2.specs.TransformerSpec":
    """The model as CTranslate2's TransformerSpec: post-LN or pre-LN, scaled embeddings, positions as a table.

    The spec holds the given tensors, and quantizing it (`spec.optimize`) rewrites them in place: pass a copy of
    the weights of a model that is still in use."""
    import math

    import torch
    from ctranslate2.specs import TransformerSpec, common_spec

    from modeling_vanilla import sinusoidal_positions

    if config.activation_function not in ACTIVATIONS:
        raise UsageError(
            f"activation_function {config.activation_function!r} has no CTranslate2 equivalent "
            f"(supported: {', '.join(ACTIVATIONS)})"
        )
    spec = TransformerSpec.from_config(
        (config.encoder_layers, config.decoder_layers),
        config.num_heads,
        pre_norm=config.norm_first,
        activation=getattr(common_spec.Activation, ACTIVATIONS[config.activation_function]),
    )
    if config.position_embedding_type == "learned":
        encoder_positions = weights["model.encoder.embed_positions.embed_positions.weight"]
        decoder_positions = weights["model.decoder.embed_positions.embed_positions.weight"]
    else:
        # CTranslate2's built-in sinusoids concatenate the sines and cosines; sec. 3.5 interleaves them, so the
        # table is written out, for the positions eval.py cuts sources and outputs at (position_table_length).
        positions = torch.arange(position_table_length(config))
        encoder_positions = decoder_positions = sinusoidal_positions(positions, config.d_model)
    embeddings = embedding_weights(config, weights)

    def linear(linear_spec, prefix: str) -> None:
        linear_spec.weight = weights[f"{prefix}.weight"]
        linear_spec.bias = weights[f"{prefix}.bias"]

    def layer_norm(norm_spec, prefix: str) -> None:
        norm_spec.gamma = weights[f"{prefix}.weight"]
        norm_spec.beta = weights[f"{prefix}.bias"]

    def feed_forward(ffn_spec, prefix: str) -> None:
        linear(ffn_spec.linear_0, f"{prefix}.feed_forward.fc1")
        linear(ffn_spec.linear_1, f"{prefix}.feed_forward.fc2")
        layer_norm(ffn_spec.layer_norm, f"{prefix}.feed_forward_sublayer.norm")

    scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
    spec.encoder.embeddings[0].weight = embeddings["encoder"]
    spec.encoder.scale_embeddings = scale
    spec.encoder.position_encodings.encodings = encoder_positions
    spec.decoder.embeddings.weight = embeddings["decoder"]
    spec.decoder.scale_embeddings = scale
    spec.decoder.position_encodings.encodings = decoder_positions
    spec.decoder.projection.weight = embeddings["output"]
    if config.norm_first:
        layer_norm(spec.encoder.layer_norm, "model.encoder.final_norm")
        layer_norm(spec.decoder.layer_norm, "model.decoder.final_norm")

    # Our fused projections are CTranslate2's layout: self-attention [q; k; v], encoder-decoder attention q, [k; v].
    for index, layer_spec in enumerate(spec.encoder.layer):
        prefix = f"model.encoder.layers.{index}"
        linear(layer_spec.self_attention.linear[0], f"{prefix}.self_attn.qkv_proj")
        linear(layer_spec.self_attention.linear[1], f"{prefix}.self_attn.out_proj")
        layer_norm(layer_spec.self_attention.layer_norm, f"{prefix}.self_attn_sublayer.norm")
        feed_forward(layer_spec.ffn, prefix)
    for index, layer_spec in enumerate(spec.decoder.layer):
        prefix = f"model.decoder.layers.{index}"
        linear(layer_spec.self_attention.linear[0], f"{prefix}.self_attn.qkv_proj")
        linear(layer_spec.self_attention.linear[1], f"{prefix}.self_attn.out_proj")
        layer_norm(layer_spec.self_attention.layer_norm, f"{prefix}.self_attn_sublayer.norm")
        linear(layer_spec.attention.linear[0], f"{prefix}.cross_attn.q_proj")
        linear(layer_spec.attention.linear[1], f"{prefix}.cross_attn.kv_proj")
        linear(layer_spec.attention.linear[2], f"{prefix}.cross_attn.out_proj")
        layer_norm(layer_spec.attention.layer_norm, f"{prefix}.cross_attn_sublayer.norm")
        feed_forward(layer_spec.ffn, prefix)

    spec.register_source_vocabulary(tokens)
    spec.register_target_vocabulary(tokens)
    spec.config.bos_token = tokens[config.bos_token_id]
    spec.config.eos_token = tokens[config.eos_token_id]
    spec.config.decoder_start_token = tokens[config.decoder_start_token_id]
    spec.config.layer_norm_epsilon = LAYER_NORM_EPSILON
    return spec


def position_table_length(config) -> int:
    """The positions a conversion holds: the learned table, or sinusoids for SINUSOID_POSITIONS at least."""
    if config.position_embedding_type == "learned":
        return config.max_position_embeddings
    return max(config.max_position_embeddings, SINUSOID_POSITIONS)


def source_fingerprint(folder: Path) -> dict[str, str]:
    """SHA-256 of each file the conversion reads, so that a retrained or re-averaged model is converted again, and
    the conversion's format, so that a conversion by an older eval.py is made again."""
    files = {name: sha256_of(folder / name) for name in SOURCE_FILES if (folder / name).is_file()}
    return {**files, "format": CONVERSION_FORMAT}


def conversion(folder: Path, quantization: str, fingerprint: dict[str, str]) -> Callable[[Path], None]:
    """The model folder converted to CTranslate2 with weights in `quantization`: a function saving it to a folder,
    with the `fingerprint` of the folder's files (source_fingerprint) it was converted from."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    if config.model_type != "vanilla":
        raise UsageError(f"{folder}: --engine ctranslate2 converts vanilla models, not {config.model_type!r}")
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    spec = model_spec(config, load_weights(folder), vocabulary(tokenizer, config.vocab_size))
    spec.validate()
    spec.optimize(quantization=quantization)

    def write(target: Path) -> None:
        spec.save(str(target))
        digests = {path.name: sha256_of(path) for path in sorted(target.iterdir())}
        (target / SOURCE_RECORD).write_text(json.dumps({**fingerprint, CONVERTED_DIGESTS: digests}, indent=2) + "\n")

    return write


def converted_model(
    folder: Path, quantization: str, damaged: bool = False
) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """The cached conversion (`ctranslate2-<quantization>/` in conversion_home), converted first if missing, stale or
    `damaged` (CTranslate2 could not load it), written atomically. Another process converting the same model (eval.py
    on two splits at once) is waited for, and its conversion taken.

    A folder that cannot be written (a read-only mount, another user's folder) gets the conversion in a
    temporary folder, for this run only: returned beside the path, it is removed when dropped."""
    home = conversion_home(folder)
    output = home / f"{CONVERSION_PREFIX}{quantization}"
    fingerprint = source_fingerprint(folder)  # hashed once: the weights may be large
    if not damaged and is_current_conversion(output, fingerprint):
        return output, None
    try:
        home.mkdir(parents=True, exist_ok=True)
        with locked(home / f".{output.name}.lock", waiting_for=f"another eval.py converting {folder} into {output}"):
            if damaged or not is_current_conversion(output, fingerprint, warn=False):  # or another process's
                write_folder_atomically(output, conversion(folder, quantization, fingerprint))
        return output, None
    except OSError as error:
        if error.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            message = f"cannot write the CTranslate2 conversion to {output}: {error.strerror or error}"
            raise UsageError(message) from None
        print(
            f"note: {home} cannot be written ({error.strerror}): the conversion is for this run only, not cached",
            file=sys.stderr,
        )
    scratch = tempfile.TemporaryDirectory(prefix="ctranslate2-")
    write_folder_atomically(Path(scratch.name) / output.name, conversion(folder, quantization, fingerprint))
    return Path(scratch.name) / output.name, scratch


def conversion_home(folder: Path) -> Path:
    """Where a model's conversions are cached: in its folder, or for a revision in the Hub's cache (whose folder holds
    the Hub's files only) in <XDG_CACHE_HOME or ~/.cache>/vanilla-transformer/ctranslate2/models--org--name/<commit>
    (and the model's path inside the revision, for a checkpoint pushed with it)."""
    snapshot = hub_revision(folder)
    if snapshot is None:
        return folder
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    inside = folder.resolve().relative_to(snapshot)
    return cache / "vanilla-transformer" / "ctranslate2" / snapshot.parent.parent.name / snapshot.name / inside


def is_current_conversion(output: Path, fingerprint: dict[str, str], warn: bool = True) -> bool:
    """Whether `output` holds a whole conversion of the model whose files have the `fingerprint`
    (source_fingerprint); with `warn`, a converted file missing, cut short or changed since is named in a warning."""
    recorded = read_json(output / SOURCE_RECORD)  # a damaged record: converted again
    digests = recorded.pop(CONVERTED_DIGESTS, None) if isinstance(recorded, dict) else None
    if recorded != fingerprint or not isinstance(digests, dict) or not digests:  # stale, or from an older eval.py
        return False
    for name, digest in digests.items():
        if not (output / name).is_file() or sha256_of(output / name) != digest:
            if warn:
                print(
                    f"warning: the cached conversion {output / name} is missing or damaged (not the file converted): "
                    "converting again",
                    file=sys.stderr,
                )
            return False
    return True


def is_cached_conversion(folder: Path) -> bool:
    """A conversion that eval.py cached inside a model folder (converted_model), not a folder of the user's."""
    names = [f"{CONVERSION_PREFIX}{quantization}" for quantization in QUANTIZATIONS]
    return folder.name in names and (folder / SOURCE_RECORD).is_file()


@dataclass
class CTranslate2Model:
    """A CTranslate2 Translator with the model's vocabulary and decoding defaults, in place of the torch model."""

    translator: "ctranslate2.Translator"
    tokens: list[str]
    generation_config: "GenerationConfig"
    quantization: str
    positions: int  # the longest source, and output, its position table holds
    scratch: tempfile.TemporaryDirectory | None = field(default=None, repr=False)  # a conversion for this run only,
    # removed with the model

    @property
    def device(self) -> str:
        return self.translator.device

    def generate_ids(
        self,
        input_ids: list[list[int]],
        num_beams: int,
        length_penalty: float,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        return_scores: bool = False,
    ) -> list[list[int]] | tuple[list[list[int]], list[float]]:
        """Beam search (greedy for one beam) over unpadded sources; the generated ids, start and end tokens left out."""
        ids = {token: index for index, token in enumerate(self.tokens)}
        results = self.translator.translate_batch(
            [[self.tokens[index] for index in sentence] for sentence in input_ids],
            beam_size=num_beams,
            length_penalty=length_penalty,
            max_decoding_length=max_new_tokens,
            min_decoding_length=min_new_tokens,
            max_input_length=0,  # sources come cut to the position table (encode); 0 lifts CTranslate2's own 1024
            return_scores=return_scores,
            max_batch_size=share_per_replica(self.translator, len(input_ids)),
        )
        outputs = [[ids[token] for token in result.hypotheses[0]] for result in results]
        if return_scores:
            return outputs, [result.scores[0] for result in results]
        return outputs


def load(
    model: str, quantization: str | None, threads: int | None = None
) -> tuple[CTranslate2Model, "PreTrainedTokenizerBase"]:
    """The model folder converted (or its cached conversion) on the GPU if CTranslate2 sees one, and its tokenizer."""
    ctranslate2 = import_ctranslate2()
    import torch
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    quantization = quantization or "float32"
    if quantization not in QUANTIZATIONS:
        raise UsageError(f"--quantization {quantization!r} must be one of {', '.join(QUANTIZATIONS)}")
    folder = Path(model) if Path(model).is_dir() else hub_snapshot(model)
    device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    supported = ctranslate2.get_supported_compute_types(device)
    if quantization not in supported:
        raise UsageError(
            f"--quantization {quantization}: CTranslate2 on {device} supports {', '.join(sorted(supported))}"
        )
    replicas, scratch = loaded_conversion(folder, quantization, device, threads or torch.get_num_threads())
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = CTranslate2Model(
        translator=replicas,
        tokens=vocabulary(tokenizer, config.vocab_size),
        generation_config=GenerationConfig.from_pretrained(folder),
        quantization=quantization,
        positions=position_table_length(config),
        scratch=scratch,
    )
    if device == "cuda":
        check_gpu_libraries(model, ctranslate2.__version__)
    return model, tokenizer


def hub_snapshot(model_id: str) -> Path:
    """The folder of a Hub model's revision in the local Hub cache, what the conversion reads fetched first (unless
    HF_HUB_OFFLINE=1, which takes the cached revision)."""
    from huggingface_hub import snapshot_download

    wanted = [*SOURCE_FILES, "generation_config.json", "model.safetensors.index.json", "model-*.safetensors", "*.py"]
    try:
        return Path(snapshot_download(model_id, allow_patterns=wanted))
    except (OSError, ValueError) as error:
        where = "no such model folder, and no such Hub model available"
        raise UsageError(f"{model_id}: {where} ({first_line(error)})") from None


def loaded_conversion(
    folder: Path, quantization: str, device: str, threads: int
) -> tuple["ctranslate2.Translator", tempfile.TemporaryDirectory | None]:
    """The model's conversion (converted_model) loaded as a translator; a cached one that CTranslate2 cannot load is
    converted again with a warning, and a new one that it cannot load either is a UsageError."""
    path, scratch = converted_model(folder, quantization)
    try:
        return translator(path, device, quantization, threads), scratch
    except (RuntimeError, ValueError) as error:  # damaged in a way its record does not show, or another version's
        print(f"warning: CTranslate2 cannot load {path} ({first_line(error)}): converting again", file=sys.stderr)
    path, scratch = converted_model(folder, quantization, damaged=True)
    try:
        return translator(path, device, quantization, threads), scratch
    except (RuntimeError, ValueError) as error:
        raise UsageError(
            f"CTranslate2 cannot load the conversion of {folder} ({first_line(error)}), even converted again"
        ) from None


def check_gpu_libraries(model: CTranslate2Model, version: str) -> None:
    """One token decoded on the GPU, or a UsageError saying what to install: the ctranslate2 wheel links the CUDA 12
    runtime in but loads cuBLAS 12 by name only when it first computes, and a torch built for CUDA 13 brings
    cuBLAS 13 alone: eval.py says so before its first batch, not in a traceback."""
    try:
        model.generate_ids([[0]], 1, 1.0, 1)  # any one token: the first of the vocabulary
    except RuntimeError as error:
        raise UsageError(
            f"CTranslate2 {version} sees a GPU but cannot compute on it ({str(error).strip()}); its wheel needs "
            "CUDA 12's cuBLAS: pip install nvidia-cublas-cu12 and put its lib folder (site-packages/nvidia/cublas/"
            "lib) on LD_LIBRARY_PATH, or decode on the CPU with CUDA_VISIBLE_DEVICES="
        ) from None
