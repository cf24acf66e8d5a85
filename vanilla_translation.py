"""A trained model and its tokenizer loaded for decoding (torch or CTranslate2), and beam search over a corpus."""

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import vanilla_ctranslate2
from vanilla_cli import UsageError, cpu_bf16_problem, first_line
from vanilla_files import complete_checkpoints

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from eval import EvalArguments

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_model_path(name: str) -> None:
    """Cheap checks of a local model folder (config and tokenizer present); Hub ids are checked when loaded."""
    folder = Path(name)
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            # A run killed or still training before its final save; a checkpoint it was saving may not load.
            checkpoints = complete_checkpoints(folder, warn=False)
            hint = ""
            if checkpoints:
                newest = shlex.quote(str(checkpoints[-1]))
                hint = f"; it holds a run's checkpoints: pass --model {newest}, or --average_last N"
            raise UsageError(f"{name}: not a model folder (no config.json){hint}")
        if not any((folder / file).is_file() for file in TOKENIZER_FILES):
            raise UsageError(f"{name}: the model has no tokenizer (no {' or '.join(TOKENIZER_FILES)})")
    elif folder.exists():
        raise UsageError(f"{name}: not a model folder")
    elif folder.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:  # a Hub id is "name" or "org/name"
        raise UsageError(f"{name}: no such model folder")


def load_model_and_tokenizer(name: str, attn_implementation: str | None = None, dtype: str | None = None):
    """The model (on the best device, in eval mode) and its tokenizer; UsageError naming what is missing."""
    import torch
    from transformers import AutoTokenizer

    check_model_path(name)
    folder = Path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=True)
    except (OSError, ValueError) as error:
        if folder.is_dir() and not (folder / "tokenizer.json").is_file():
            raise UsageError(
                f"{name}: cannot load its tokenizer: no tokenizer.json, and tokenizer_config.json alone does not "
                f"hold a vocabulary ({first_line(error)})"
            ) from None
        where = "no such model folder, and no such Hub model available" if not folder.exists() else "cannot load it"
        raise UsageError(f"{name}: {where} ({first_line(error)})") from None
    model = load_model(name, attn_implementation, dtype)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problem = cpu_bf16_problem() if device.type == "cpu" and model.dtype == torch.bfloat16 else None
    if problem:
        print(
            f"warning: bfloat16 weights: {problem}, so decoding runs slower than in float32 (--dtype float32)",
            file=sys.stderr,
        )
    broken = non_finite_weights(model, str(name))
    if broken:
        print(
            f"warning: {broken}: the training that made them diverged, and its translations are nonsense",
            file=sys.stderr,
        )
    return model.to(device).eval(), tokenizer


def non_finite_weights(model: "PreTrainedModel", whose: str) -> str | None:
    """How many of the model's weight tensors hold NaN or inf, what a training run that diverged leaves, naming the
    first ("3 of the 65 weight tensors of <whose> hold NaN or inf (<name>, ...)"); None where none do."""
    import torch

    broken = [name for name, weight in model.named_parameters() if not torch.isfinite(weight).all()]
    if not broken:
        return None
    total = len(list(model.parameters()))
    return f"{len(broken)} of the {total} weight tensors of {whose} hold NaN or inf ({broken[0]}, ...)"


def load_model(name: str | Path, attn_implementation: str | None = None, dtype: str | None = None) -> "PreTrainedModel":
    """AutoModelForSeq2SeqLM.from_pretrained, a missing or damaged weights file reported as a UsageError."""
    from safetensors import SafetensorError
    from transformers import AutoModelForSeq2SeqLM
    from transformers.utils import logging

    # Local weights load in a blink; the "Loading weights" bar would only stand between the user and an error line.
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        return AutoModelForSeq2SeqLM.from_pretrained(
            name, trust_remote_code=True, attn_implementation=attn_implementation, dtype=dtype or "auto"
        )
    except (OSError, ValueError, SafetensorError) as error:
        where = "no such model folder, and no such Hub model available" if not Path(name).exists() else "cannot load it"
        raise UsageError(f"{name}: {where} ({first_line(error)})") from None
    finally:
        if bars:
            logging.enable_progress_bar()


def load_translation_model(args: "EvalArguments"):
    """The model that decodes: the torch model (in --dtype), or its CTranslate2 conversion, and the tokenizer."""
    if args.engine == "ctranslate2":
        check_model_path(args.model)
        model, tokenizer = vanilla_ctranslate2.load(args.model, args.quantization)
    else:
        model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
        if args.compile:
            compile_for_decoding(model, args.compile_mode)
    take_decoding_defaults(args, model.generation_config)
    return model, tokenizer


GENERATE_DEFAULTS = {"num_beams": 1, "length_penalty": 1.0}  # generate()'s own: greedy, no length penalty


def saved_decoding(generation_config: dict) -> dict:
    """The beam size and length penalty a model decodes with by default: its generation_config's (train.py saves
    sec. 6.1's), else, where it saved none (transformers 5 leaves them unset), generate()'s own (GENERATE_DEFAULTS)."""
    return {
        name: default if generation_config.get(name) is None else generation_config[name]
        for name, default in GENERATE_DEFAULTS.items()
    }


def take_decoding_defaults(args: "EvalArguments", generation_config) -> None:
    """The model's saved decoding settings (saved_decoding) for every decoding flag the user left out."""
    saved = saved_decoding({name: getattr(generation_config, name, None) for name in GENERATE_DEFAULTS})
    for name, value in saved.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def compile_for_decoding(model: "PreTrainedModel", mode: str = "reduce-overhead", backend: str = "inductor") -> None:
    """--compile: torch.compile the forward that every decoding step calls (with COMPILED_DECODING's static cache).

    Compiled here rather than by generate()'s auto-compilation, which transformers applies to greedy search and
    sampling but not to beam search; `mode` as there, where reduce-overhead is the default: on a GPU each step is
    replayed as CUDA graphs, one launch instead of one per kernel. As there, the first call of each generate() runs
    eagerly: it computes the source's cross-attention keys and values and allocates the static cache's buffers, which
    then lie outside the compiled graphs, at addresses the CUDA graphs of the later steps keep reading (beam search
    reorders them in place, `_reorder_cache`)."""
    import torch

    eager = model.forward
    compiled = torch.compile(model.forward, mode=mode, backend=backend)

    def forward(*args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # the name before transformers 5.2x
        decoder_cache = getattr(cache, "self_attention_cache", cache)
        filled = decoder_cache is not None and decoder_cache.layers[0].is_initialized
        return compiled(*args, **kwargs) if filled else eager(*args, **kwargs)

    model.forward = forward


# Sec. 6.1: "We set the maximum output length during inference to input length + 50, but terminate early when
# possible."
MAX_LENGTH_OFFSET = 50

# generate() arguments for --compile: fixed-size key/value buffers, so each step has the same shapes.
COMPILED_DECODING = {"cache_implementation": "static", "disable_compile": True}


def generation_arguments(args: "EvalArguments", input_length: int, positions: int | None = None) -> dict:
    """Sec. 6.1's beam search, output limited to input length + offset (replacing the model's saved max_length), and
    to the model's `positions` where its position table ends (learned embeddings)."""
    if input_length + args.max_length_offset < 1:
        raise UsageError(
            f"--max_length_offset {args.max_length_offset} leaves no room for an output after an input of "
            f"{input_length} tokens; expected at least {1 - input_length}"
        )
    max_new_tokens = output_limit(input_length, args.max_length_offset, positions)
    settings = {"num_beams": args.num_beams, "max_new_tokens": max_new_tokens, "max_length": None}
    if args.num_beams > 1:  # greedy search ranks no hypotheses: generate() warns that it ignores a length penalty
        settings["length_penalty"] = args.length_penalty
    return settings


def output_limit(input_length: int, offset: int, positions: int | None) -> int:
    """The most tokens an output may have: input length + offset (sec. 6.1), within a position table's `positions`."""
    return input_length + offset if positions is None else min(input_length + offset, positions)


def position_limit(model) -> int | None:
    """The positions a model's table holds (learned embeddings, a CTranslate2 conversion); None for sinusoids."""
    if hasattr(model, "positions"):  # a CTranslate2Model
        return model.positions
    config = model.config
    return config.max_position_embeddings if config.position_embedding_type == "learned" else None


def encode(
    tokenizer: "PreTrainedTokenizerBase", texts: list[str], max_source_length: int, positions: int | None = None
) -> list[list[int]]:
    """Token ids, cut at max_source_length and at the model's `positions` (position_limit) where it has a limit; a
    warning on stderr says how many sources were cut, whose translations then miss their ends, and one how many hold
    characters the vocabulary lacks."""
    limit = max_source_length if positions is None else min(max_source_length, positions)
    # One token more than the limit tells a source that was cut from one that fits exactly.
    longer = tokenizer(texts, truncation=True, max_length=limit + 1)["input_ids"]
    unknown = sum(tokenizer.unk_token_id in ids for ids in longer) if tokenizer.unk_token_id is not None else 0
    if unknown:  # a script the training text lacked reads as nothing the model knows
        print(
            f"warning: {unknown} of {len(texts)} sources hold characters that the model's vocabulary lacks, read as "
            f"{tokenizer.unk_token}: their translations miss them",
            file=sys.stderr,
        )
    cut = [index for index, ids in enumerate(longer) if len(ids) > limit]
    if cut:
        why = "--max_source_length" if positions is None or max_source_length <= positions else "the position table"
        print(
            f"warning: {len(cut)} of {len(texts)} sources are longer than {limit} tokens ({why}) and are cut to "
            "them: their translations miss the rest",
            file=sys.stderr,
        )
        # Encoded again at the limit, not sliced: the tokenizer's truncation keeps the closing </s>.
        shorter = tokenizer([texts[index] for index in cut], truncation=True, max_length=limit)["input_ids"]
        for index, ids in zip(cut, shorter, strict=True):
            longer[index] = ids
    return longer


def translate(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    texts: list[str],
    args: "EvalArguments",
    max_source_length: int,
    progress: bool = True,
) -> list[str]:
    """Beam search over batches of sources of similar length (longest first); hypotheses come back in input order.

    The output limit is the batch's longest input + max_length_offset; sorting keeps that close to each sentence's.
    """
    import torch
    from tqdm.auto import tqdm

    positions = position_limit(model)
    input_ids = encode(tokenizer, texts, max_source_length, positions)
    order = sorted(range(len(texts)), key=lambda index: len(input_ids[index]), reverse=True)
    hypotheses: list[str] = [""] * len(texts)
    batches = [order[start : start + args.batch_size] for start in range(0, len(order), args.batch_size)]
    generation = [generation_arguments(args, len(input_ids[indices[0]]), positions) for indices in batches]  # checked
    for indices, settings in tqdm(
        list(zip(batches, generation, strict=True)), desc="translating", unit="batch", disable=not progress
    ):
        if args.engine == "ctranslate2":
            sources = [input_ids[index] for index in indices]
            output = model.generate_ids(sources, settings["num_beams"], args.length_penalty, settings["max_new_tokens"])
        else:
            batch = tokenizer.pad({"input_ids": [input_ids[index] for index in indices]}, return_tensors="pt")
            batch = batch.to(model.device)
            with torch.no_grad():
                output = model.generate(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    **settings,
                    **(COMPILED_DECODING if args.compile else {}),
                )
        for index, text in zip(indices, tokenizer.batch_decode(output, skip_special_tokens=True), strict=True):
            hypotheses[index] = " ".join(text.splitlines())
    return hypotheses
