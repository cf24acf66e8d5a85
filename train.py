"""Train the Transformer on a parallel corpus with Seq2SeqTrainer, with the paper's recipe (sec. 5) by default.

    python train.py --output_dir out                      # the embedded English -> German number-words task
    python train.py --train_file train.jsonl --validation_file validation.jsonl \
        --source_lang de --target_lang en --preset base --output_dir out
    python train.py recipe.yaml                           # the same arguments from one JSON or YAML file
    python train.py recipe.yaml --num_train_epochs 2      # a recipe, with flags given after it taking precedence
    torchrun --nproc_per_node 2 train.py ...              # data-parallel (DDP); on CPUs with the gloo backend
    accelerate launch --multi_gpu --num_processes 2 train.py ...            # the same through accelerate
    accelerate launch --config_file recipes/accelerate_fsdp.yaml train.py ...  # FSDP, on GPUs

The learning rate, sec. 5.3: lrate = d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5). transformers'
"inverse_sqrt" schedule multiplies the peak --learning_rate by min(step / warmup_steps, sqrt(warmup_steps / step)),
so a peak of (d_model * warmup_steps)^-0.5, the default, gives the paper's lrate at every optimizer step.
"""

import errno
import filecmp
import inspect
import json
import math
import os
import re
import shutil
import signal
import sys
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from datasets import IterableDatasetDict
from tokenizers import Tokenizer
from transformers import (
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    EvalPrediction,
    GenerationConfig,
    HfArgumentParser,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)
from transformers.trainer_utils import HubStrategy, SaveStrategy
from transformers.training_args import ParallelMode
from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available
from transformers.utils.hub import PushInProgress, hf_api

from configuration_vanilla import BOS_TOKEN_ID, EOS_TOKEN_ID, PAD_TOKEN_ID, PRESETS
from modeling_vanilla import VanillaConfig, VanillaForConditionalGeneration
from vanilla_batching import TokenBudgetBatchSampler, TokenCounter, padded_length
from vanilla_data import (
    AVERAGED_MARKER,
    DATA_RECORD,
    DATA_RECORD_KEYS,
    TRAINER_STATE,
    DataArguments,
    UsageError,
    checkpoint_folders,
    complete_checkpoints,
    corpus_texts,
    default_vocab_size,
    exit_on_usage_error,
    load_raw_datasets,
    probe_write,
    read_text,
    stream_raw_datasets,
    streamed_texts,
    train_bpe_tokenizer,
    trainer_state,
    wrap_tokenizer,
)
from vanilla_hub import CARD, NOT_PUSHED, model_card
from vanilla_time_budget import time_budget_callbacks

# Sec. 6.1: "beam search with a beam size of 4 and length penalty alpha = 0.6".
DECODING = dict(num_beams=4, length_penalty=0.6, early_stopping=True)
# VanillaConfig arguments that are no flag: the tokenizer fixes the vocabulary and the special ids (--vocab_size sizes
# the BPE train.py learns), and the cache is a decoding matter.
NOT_FLAGS = ("vocab_size", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")
RECIPE_SUFFIXES = (".json", ".yaml", ".yml")
STREAMED_TOKENIZER_PAIRS = 100_000  # with --streaming and no --tokenizer_name: the BPE's sample of the training split
LOSS_TOTAL = "loss_total.json"  # in each checkpoint: the training loss summed over every step so far
# Top-level files of a replaced model that the new one may not overwrite by name: old weights and eval.py's reports
# of them. They go with the old model; every other entry of output_dir (checkpoints, logs, ...) stays.
OLD_MODEL_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "eval_results_*.json", "predictions_*.txt")


def config_fields(config_class: type[VanillaConfig]) -> dict[str, inspect.Parameter]:
    """The named arguments of the config class's __init__ (and its parents' up to PretrainedConfig) a flag sets."""
    fields = {}
    for cls in config_class.__mro__:
        if cls is PretrainedConfig or not issubclass(cls, PretrainedConfig):
            break
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if parameter.kind is parameter.POSITIONAL_OR_KEYWORD and name != "self" and name not in NOT_FLAGS:
                fields.setdefault(name, parameter)
    return fields


def documented_arguments(config_class: type[VanillaConfig]) -> dict[str, str]:
    """Each `name: text` line of the Args section of the config class's docstring (and its parents')."""
    documented = {}
    for cls in reversed(config_class.__mro__):
        documented.update(re.findall(r"^ {4}(\w+): (.+)$", inspect.getdoc(cls) or "", re.MULTILINE))
    return documented


def model_arguments(config_class: type[VanillaConfig] = VanillaConfig) -> type:
    """The dataclass of model flags: a preset, the tokenizer, --config_overrides, and one flag per config field.

    Each field of `config_class.__init__` becomes a flag of its name that overrides the preset, so a new field
    reaches the command line without a change here."""
    documented = documented_arguments(config_class)
    flags = [
        ("preset", str, field(default="base", metadata={"help": f"Model shape: {', '.join(PRESETS)}."})),
        (
            "tokenizer_name",
            str | None,
            field(
                default=None,
                metadata={"help": "A tokenizer to load; default: train a joint BPE on the training split."},
            ),
        ),
        (
            "vocab_size",
            int | None,
            field(
                default=None, metadata={"help": "Size of the trained BPE; default: a quarter of the distinct words."}
            ),
        ),
        (
            "config_overrides",
            str | None,
            field(
                default=None,
                metadata={"help": "Config fields as key=value,... over the preset (the named flags win over these)."},
            ),
        ),
    ]
    for name, parameter in config_fields(config_class).items():
        kind = parameter.annotation if parameter.annotation is not inspect.Parameter.empty else type(parameter.default)
        described = documented.get(name, name)
        text = (
            f"{described[:1].upper()}{described[1:]} Overrides the preset (the config's default: {parameter.default})."
        )
        flags.append((name, kind | None, field(default=None, metadata={"help": text.replace("%", "%%")})))
    return make_dataclass(
        "ModelArguments",
        flags,
        namespace={"config_class": config_class, "__doc__": "The model's shape (a preset, then overrides)."},
    )


ModelArguments = model_arguments()


@dataclass
class TrainingArguments(Seq2SeqTrainingArguments):
    """Trainer's arguments with the paper's recipe (sec. 5.3) as defaults, and --overwrite_output_dir."""

    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate; default (d_model * warmup_steps)^-0.5, the paper's."}
    )
    lr_scheduler_type: str = field(default="inverse_sqrt", metadata={"help": "Sec. 5.3: warmup, then 1/sqrt(step)."})
    warmup_steps: float = field(default=4000, metadata={"help": "Sec. 5.3: warmup_steps = 4000."})
    adam_beta2: float = field(default=0.98, metadata={"help": "Sec. 5.3: beta_2 = 0.98."})
    adam_epsilon: float = field(default=1e-9, metadata={"help": "Sec. 5.3: epsilon = 1e-9."})
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={
            "help": "Batches of similar lengths cut padding (sec. 5.1).",
            "choices": ["random", "group_by_length"],
        },
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train into an output_dir that already holds a model or checkpoints."}
    )
    max_train_seconds: float | None = field(
        default=None, metadata={"help": "Stop training after this many seconds (evaluations and saves included)."}
    )
    save_at_seconds: float | None = field(
        default=None, metadata={"help": "Also keep the model after this many seconds, in output_dir/model-at-<N>s."}
    )
    max_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Batches of at most this many padded source + target tokens, of pairs of similar lengths "
            "(sec. 5.1: about 25000 + 25000), in place of --per_device_train_batch_size sentences."
        },
    )

    def __post_init__(self):
        if (self.bf16 or self.bf16_full_eval) and not (is_torch_bf16_gpu_available() or is_torch_xla_available()):
            self.use_cpu = True  # Trainer refuses bf16 without an accelerator unless told to train on the CPU
        super().__post_init__()

    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read --dataset_name or the data files as training consumes them, tokenizing on the fly, for "
            "corpora too large to load (or to wait for); needs a --max_steps budget."
        },
    )


def paper_peak_learning_rate(d_model: int, warmup_steps: float) -> float:
    """Sec. 5.3 lrate at step = warmup_steps, where the "inverse_sqrt" schedule peaks: (d_model * warmup)^-0.5."""
    return (d_model * max(warmup_steps, 1)) ** -0.5


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Command-line flags, optionally after a JSON/YAML file holding flags (the command line wins)."""
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    if argv and argv[0].endswith(RECIPE_SUFFIXES):
        parser.set_defaults(**read_recipe(argv[0], {action.dest for action in parser._actions}))
        argv = argv[1:]
    on_cpus = data_parallel_on_cpus(parser, argv)
    try:
        model_args, data_args, args = parser.parse_args_into_dataclasses(argv)
    except ValueError as error:  # a Trainer flag combination it refuses
        raise UsageError(str(error)) from None
    if launched_processes() > 1 and args.parallel_mode != ParallelMode.DISTRIBUTED:
        raise UsageError(
            f"launched as {launched_processes()} processes, but Trainer would not train them data-parallel "
            f"(--use_cpu {args.use_cpu}, --ddp_backend {args.ddp_backend}); drop those flags"
        )
    if on_cpus and args.process_index == 0:
        print(f"no GPU: {args.world_size} processes train data-parallel (DDP) on the CPUs with the gloo backend")
    return model_args, data_args, args


def launched_processes() -> int:
    """The number of processes torchrun (or `accelerate launch`, or mpirun) started for this training."""
    names = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    return max(int(os.environ.get(name, 1)) for name in names)


def data_parallel_on_cpus(parser: HfArgumentParser, argv: list[str]) -> bool:
    """On a machine without GPUs, makes a multi-process launch train data-parallel: --use_cpu with gloo by default.

    Without --use_cpu, accelerate leaves a CPU launch undistributed: torchrun's processes train independently into
    one folder, and with --ddp_backend gloo alone they also scale the loss by the process count (a gloo group, but no
    DDP, so the token count that normalizes it is this process's only). Launches that cannot be data-parallel here are
    refused, naming the command that is."""
    if "ACCELERATE_USE_CPU" in os.environ and "MASTER_ADDR" in os.environ and launched_processes() == 1:
        # accelerate's single-process launcher sets MASTER_ADDR only when asked for several processes.
        raise UsageError(
            "accelerate launch started one process: without --multi_gpu it starts several on CPUs only through "
            "mpirun; run `accelerate launch --multi_gpu --num_processes N train.py ...` or `torchrun "
            "--nproc_per_node N train.py ...` (both train data-parallel, on the CPUs too)"
        )
    if launched_processes() == 1 or torch.cuda.is_available():
        return False
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise UsageError(
            "FSDP needs GPUs: accelerate shards a model only across GPU processes (on CPUs it would train plain DDP); "
            "on CPUs launch without the FSDP config: `torchrun --nproc_per_node N train.py ...`"
        )
    backend = parser.parse_known_args(argv)[0].ddp_backend
    if backend not in (None, "gloo"):
        raise UsageError(f"--ddp_backend {backend} needs GPUs, and this machine has none; drop it (gloo is used)")
    parser.set_defaults(use_cpu=True, ddp_backend="gloo")
    return True


def read_recipe(path: str, known: set[str]) -> dict:
    """The flags held by a JSON or YAML file, refusing keys that are no flag of train.py."""
    text = read_text(path)
    try:
        values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise UsageError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {error}") from None
    if not isinstance(values, dict):
        raise UsageError(f"{path}: expected a mapping of flag names to values")
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"{path}: unknown keys {', '.join(unknown)} (python train.py --help lists the flags)")
    return values


def check_arguments(model_args: ModelArguments, args: TrainingArguments) -> None:
    """Refuses values that Trainer would crash on later or silently turn into a run that trains nothing."""
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} is {getattr(args, name)}; expected a positive integer")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UsageError(f"--max_tokens is {args.max_tokens}; expected a positive integer")
    if args.learning_rate is not None and args.learning_rate <= 0:
        raise UsageError(f"--learning_rate is {args.learning_rate}; expected a positive number")
    if args.max_steps <= 0 and args.num_train_epochs <= 0:
        raise UsageError(
            f"nothing to train: --num_train_epochs is {args.num_train_epochs} and --max_steps is {args.max_steps}; "
            "expected a positive --num_train_epochs or --max_steps"
        )
    if args.streaming and args.max_steps <= 0:
        raise UsageError(
            "--streaming reads the data without knowing its size, so epochs cannot be counted: give the training "
            "budget with --max_steps"
        )
    if args.streaming and args.max_tokens is not None:
        raise UsageError(
            "--max_tokens sorts the whole training split by length, which --streaming never holds: give one of them "
            "(with --streaming, --per_device_train_batch_size sets the batch)"
        )
    if args.save_strategy == "steps" and args.save_steps <= 0:
        raise UsageError(f"--save_steps is {args.save_steps} with --save_strategy steps; expected a positive number")
    if model_args.vocab_size is not None and model_args.tokenizer_name:
        raise UsageError("--vocab_size sizes the BPE that train.py learns; it cannot resize --tokenizer_name")
    for name in ("max_train_seconds", "save_at_seconds"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UsageError(f"--{name} is {getattr(args, name)}; expected a positive number of seconds")
    if None not in (args.max_train_seconds, args.save_at_seconds) and args.save_at_seconds >= args.max_train_seconds:
        raise UsageError(
            f"--save_at_seconds ({args.save_at_seconds}) must be less than --max_train_seconds "
            f"({args.max_train_seconds}), or no model is kept"
        )
    config_overrides(model_args)  # a malformed --config_overrides fails before the data is loaded


def given_flags(argv: list[str]) -> set[str]:
    """The flags that a recipe file or the command line sets; the others keep their defaults."""
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    given = set()
    if argv and argv[0].endswith(RECIPE_SUFFIXES):
        given = set(read_recipe(argv[0], {action.dest for action in parser._actions}))
        argv = argv[1:]
    unset = object()
    parser.set_defaults(**{action.dest: unset for action in parser._actions})
    namespace, _ = parser.parse_known_args(argv)
    return given | {name for name, value in vars(namespace).items() if value is not unset}


def fault_point(name: str) -> None:
    """Tests' fault injection: VANILLA_FAULT=<name> kills the process here, <name>:enospc fails as a full disk."""
    fault = os.environ.get("VANILLA_FAULT")
    if fault == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == f"{name}:enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def beside(output_dir: Path, role: str) -> Path:
    """The hidden sibling folder where the final save builds the new model ("saving") or parks the old ("replaced")."""
    output_dir = output_dir.resolve()
    return output_dir.with_name(f".{output_dir.name}.{role}")


def saved_from(output_dir: Path, checkpoint: Path) -> bool:
    """Whether output_dir holds the model of `checkpoint`: a finished run's final save is its last checkpoint's."""
    weights = sorted(path.name for path in output_dir.glob("*.safetensors"))
    return (
        (output_dir / "config.json").is_file()
        and bool(weights)
        and all(filecmp.cmp(output_dir / name, checkpoint / name, shallow=False) for name in weights)
    )


def finish_interrupted_save(output_dir: Path) -> None:
    """Completes a final save that was killed while swapping folders, or drops one killed before the swap."""
    staging, replaced = beside(output_dir, "saving"), beside(output_dir, "replaced")
    if replaced.exists():
        if not output_dir.exists():  # killed between the two renames: the new model was complete
            staging.rename(output_dir)
        keep_entries_of_replaced(replaced, output_dir)
        print(f"finished an interrupted save: {output_dir} holds the new model")
    if staging.exists():  # killed while writing the new model: the old one (if any) is intact
        shutil.rmtree(staging)


def keep_entries_of_replaced(replaced: Path, output_dir: Path) -> None:
    """Moves what is not the old model (checkpoints, logs, other files) from `replaced` into output_dir; drops it."""
    for entry in sorted(replaced.iterdir()):
        old_model_file = entry.is_file() and any(entry.match(pattern) for pattern in OLD_MODEL_FILES)
        if not old_model_file and not (output_dir / entry.name).exists():
            entry.rename(output_dir / entry.name)
    shutil.rmtree(replaced)


def check_output_dir(args: TrainingArguments) -> str | None:
    """Refuses an output_dir holding another model or an unfinished run; returns the checkpoint to resume, if any.

    Of several processes, the main one decides (and finishes or removes what it must); the others take its answer."""
    answer = [None]
    if args.process_index == 0:
        try:
            answer = [("checkpoint", prepare_output_dir(args))]
        except UsageError as error:
            answer = [("error", str(error))]
    if args.world_size > 1:
        torch.distributed.broadcast_object_list(answer, src=0)
    kind, value = answer[0]
    if kind == "error":
        raise UsageError(value)
    return value


def prepare_output_dir(args: TrainingArguments) -> str | None:
    """check_output_dir in the main process.

    Resuming never deletes anything. --overwrite_output_dir only replaces a finished model: it removes that model's
    checkpoints and averaged models now, and the model itself when the new one is saved."""
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"output_dir {output_dir} is a file, expected a folder")
    finish_interrupted_save(output_dir)
    checkpoint = args.resume_from_checkpoint
    if checkpoint is not None:
        if checkpoint.lower() in ("true", "last"):
            found = complete_checkpoints(output_dir) if output_dir.is_dir() else []
            if not found:
                raise UsageError(f"--resume_from_checkpoint: no complete checkpoint-* folder in {output_dir}")
            return str(found[-1])
        if trainer_state(Path(checkpoint)) is None:
            raise UsageError(
                f"--resume_from_checkpoint: {checkpoint} is not a complete checkpoint (no readable {TRAINER_STATE}, "
                "which Trainer writes last)"
            )
        return checkpoint
    if not output_dir.is_dir():
        return None
    checkpoints = checkpoint_folders(output_dir)
    held = (output_dir / "config.json").exists() or checkpoints
    if held and not args.overwrite_output_dir:
        raise UsageError(
            f"output_dir {output_dir} already holds a model or checkpoints; pass --overwrite_output_dir to replace "
            "it or --resume_from_checkpoint to continue it"
        )
    newest = checkpoints[-1] if checkpoints else None
    if newest is not None and (trainer_state(newest) is None or not saved_from(output_dir, newest)):
        raise UsageError(
            f"output_dir {output_dir} holds the checkpoints of an unfinished run (the newest: {checkpoints[-1].name}), "
            "and --overwrite_output_dir only replaces a finished model: continue the run with "
            "--resume_from_checkpoint last, or move the checkpoints away"
        )
    if held:
        averaged = [path for path in output_dir.glob("averaged-last-*") if (path / AVERAGED_MARKER).is_file()]
        stale = ", ".join(path.name for path in checkpoints + averaged)
        print(
            f"--overwrite_output_dir: replacing the finished model in {output_dir} when the new one is saved (the "
            "old one stays until then)" + (f"; removing its {stale}" if stale else "")
        )
        for path in checkpoints + averaged:
            shutil.rmtree(path)
    return None


def check_writable(output_dir: Path) -> None:
    """Fails before training, not after, when output_dir or the folder beside it (for the final save) is unwritable."""
    output_dir = output_dir.resolve()
    for folder in dict.fromkeys((output_dir, output_dir.parent)):
        try:
            probe_write(folder)
        except OSError as error:
            raise UsageError(f"output_dir {output_dir} cannot be written: {error.filename}: {error.strerror}") from None


def check_resume_flags(
    model_args: ModelArguments, given: set[str], checkpoint: str, config: VanillaConfig, tokenizer, texts_of
) -> None:
    """Refuses, by name, flags for a resumed run that differ from the shape and tokenizer its checkpoint fixes."""
    differ = []
    if "preset" in given:
        preset = PRESETS[model_args.preset]
        mismatched = [
            f"{name} {value}" for name, value in preset.items() if name not in given and getattr(config, name) != value
        ]
        if mismatched:
            differ.append(f"--preset {model_args.preset} ({', '.join(mismatched)})")
    for name in config_fields(model_args.config_class):
        value = getattr(model_args, name)
        if name in given and value is not None and value != getattr(config, name):
            differ.append(f"--{name} {value} (the checkpoint's: {getattr(config, name)})")
    if "config_overrides" in given and model_args.config_overrides:
        for name, value in config_overrides(model_args).items():
            if value != getattr(config, name):
                differ.append(f"--config_overrides {name}={value} (the checkpoint's: {getattr(config, name)})")
    vocab_size = model_args.vocab_size
    if (
        "vocab_size" in given
        and vocab_size is not None
        and vocab_size != config.vocab_size
        and not model_args.tokenizer_name
    ):
        # A BPE stops short of the size asked for when the data allows no more merges: retrain to compare.
        if vocab_size < config.vocab_size or len(train_bpe_tokenizer(texts_of(), vocab_size)) != config.vocab_size:
            differ.append(f"--vocab_size {vocab_size} (the checkpoint's: {config.vocab_size})")
    if "tokenizer_name" in given and model_args.tokenizer_name:
        try:
            named = AutoTokenizer.from_pretrained(model_args.tokenizer_name)
        except (OSError, ValueError) as error:
            raise UsageError(f"cannot load tokenizer {model_args.tokenizer_name!r}: {error}") from None
        if named.get_vocab() != tokenizer.get_vocab():
            differ.append(f"--tokenizer_name {model_args.tokenizer_name} (not the checkpoint's tokenizer)")
    if differ:
        raise UsageError(
            f"{checkpoint} fixes the model and these flags differ from it: {'; '.join(differ)}; drop them to resume"
        )


def config_overrides(model_args: ModelArguments) -> dict:
    """--config_overrides "key=value,...", each value read as the type of the field's default (transformers'
    PretrainedConfig.update_from_string); UsageError for a malformed pair or a key that is no flag's field."""
    if not model_args.config_overrides:
        return {}
    text = model_args.config_overrides
    names = [pair.split("=", 1)[0] for pair in text.split(",")]
    fields = config_fields(model_args.config_class)
    unknown = [name for name in names if name not in fields]
    if unknown:
        raise UsageError(
            f"--config_overrides {text}: {unknown[0]} is not a field it sets; expected some of {', '.join(fields)}"
        )
    probe = model_args.config_class()
    try:
        probe.update_from_string(text)
    except ValueError as error:
        raise UsageError(f"--config_overrides {text}: {error}; expected key=value pairs joined by commas") from None
    return {name: getattr(probe, name) for name in names}


def build_config(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase) -> VanillaConfig:
    """The preset's shape, --config_overrides over it, then every given flag; ids from the tokenizer."""
    values = config_overrides(model_args)
    fields = config_fields(model_args.config_class)
    values.update({name: getattr(model_args, name) for name in fields if getattr(model_args, name) is not None})
    special = dict(pad_token_id=PAD_TOKEN_ID, bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID)
    for name, expected in special.items():
        actual = getattr(tokenizer, name)
        if actual != expected:
            raise UsageError(f"the tokenizer's {name} is {actual}, expected {expected} (VanillaConfig's)")
    try:
        return model_args.config_class.from_preset(model_args.preset, vocab_size=len(tokenizer), **values)
    except ValueError as error:
        raise UsageError(str(error)) from None


def build_tokenizer(
    model_args: ModelArguments, raw, data_args: DataArguments, args: TrainingArguments
) -> PreTrainedTokenizerBase:
    """--tokenizer_name, or a joint BPE learned on the training split by the main process and sent to the others."""
    if model_args.tokenizer_name:
        try:
            return AutoTokenizer.from_pretrained(model_args.tokenizer_name)
        except (OSError, ValueError) as error:
            raise UsageError(f"cannot load tokenizer {model_args.tokenizer_name!r}: {error}") from None
    texts = tokenizer_texts(raw, data_args, args)
    vocab_size = default_vocab_size(texts) if model_args.vocab_size is None else model_args.vocab_size
    serialized = [
        train_bpe_tokenizer(texts, vocab_size).backend_tokenizer.to_str() if args.process_index == 0 else None
    ]
    if args.world_size > 1:
        torch.distributed.broadcast_object_list(serialized, src=0)
    return wrap_tokenizer(Tokenizer.from_str(serialized[0]))


def tokenizer_texts(raw, data_args: DataArguments, args: TrainingArguments) -> list[str]:
    """The text a joint BPE is learned from: the training split, or with --streaming its first pairs (a sample)."""
    if not args.streaming:
        return corpus_texts(raw, data_args.source_lang, data_args.target_lang)
    if args.process_index == 0:
        print(
            f"--streaming: learning the BPE on (at most) the first {STREAMED_TOKENIZER_PAIRS:,} sentence pairs of "
            "the training split (pass --tokenizer_name to use another tokenizer)"
        )
    return streamed_texts(raw["train"], data_args.source_lang, data_args.target_lang, STREAMED_TOKENIZER_PAIRS)


def tokenize(raw, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments, length_column: str):
    """input_ids from the source side, labels from the target side; both end with </s>.

    The length column, the longer side of each pair, is what group_by_length sorts on: grouping by the source alone
    leaves the targets' padding (on Multi30k, batches of 64: 18.7% of an epoch's tokens against 9.2%)."""

    def encode(batch):
        pairs = batch["translation"]
        source = [pair[data_args.source_lang] for pair in pairs]
        target = [pair[data_args.target_lang] for pair in pairs]
        features = tokenizer(source, max_length=data_args.max_source_length, truncation=True)
        features["labels"] = tokenizer(text_target=target, max_length=data_args.max_target_length, truncation=True)[
            "input_ids"
        ]
        encoded = zip(features["input_ids"], features["labels"], strict=True)
        features[length_column] = [max(len(source), len(target)) for source, target in encoded]
        return features

    progress = {} if isinstance(raw, IterableDatasetDict) else {"desc": "Tokenizing"}  # a stream maps lazily
    return raw.map(encode, batched=True, remove_columns=["translation"], **progress)


class VanillaTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer whose length-grouped sampler sees the length column (see `tokenize`), and whose checkpoints
    keep the training loss summed over the whole run, so that a resumed run reports the whole run's mean."""

    def __init__(self, *args, loss_before: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_before = loss_before  # summed over the steps of the checkpoint this run resumed from
        self.loss_since = None  # summed over this run's steps, on the device (one sync per checkpoint)
        self.tokens = TokenCounter()

    def _get_train_sampler(self, train_dataset=None):
        # Trainer drops columns the model does not take before it builds the sampler, the length column with them.
        max_tokens = getattr(self.args, "max_tokens", None)
        if max_tokens is None:
            return super()._get_train_sampler(self.train_dataset)
        return TokenBudgetBatchSampler(
            [len(ids) for ids in self.train_dataset["input_ids"]],
            [len(ids) for ids in self.train_dataset["labels"]],
            max_tokens,
            seed=self.args.seed if self.args.data_seed is None else self.args.data_seed,
            num_replicas=self.args.world_size,
            rank=self.args.process_index,
            pad_to_multiple_of=getattr(self.data_collator, "pad_to_multiple_of", None),
        )

    def training_step(self, model, inputs, *args, **kwargs) -> torch.Tensor:
        # This process's loss, divided so that the gradient accumulation steps of one optimizer step sum to its loss.
        loss = super().training_step(model, inputs, *args, **kwargs)
        self.loss_since = loss.detach() if self.loss_since is None else self.loss_since + loss.detach()
        self.tokens.count(inputs)
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "train_runtime" in logs:  # the run's summary: its rates over Trainer's runtime
            logs.update(self.tokens.rates(self.accelerator, start_time, runtime=logs["train_runtime"]))
            if self.args.torch_compile:  # one graph per shape compiled (and per graph break): recompiles add more
                logs["train_compiled_graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        elif "loss" in logs and start_time is not None:  # a training log: the rates since the last one
            logs.update(self.tokens.rates(self.accelerator, start_time))
        super().log(logs, start_time)

    def loss_total(self) -> float:
        """The loss summed over the run's steps; under DDP every process holds its share of each step's loss (Trainer
        normalizes by the tokens of all processes), so the mean over processes is the global loss. A collective."""
        since = self.loss_since if self.loss_since is not None else torch.zeros((), device=self.args.device)
        return self.loss_before + self.accelerator.reduce(since, reduction="mean").item()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        loss_sum = self.loss_total() if _internal_call else None  # every process takes part
        if _internal_call and self.args.should_save:  # a checkpoint rewritten (resumed from an older one) is
            (Path(output_dir) / TRAINER_STATE).unlink(missing_ok=True)  # incomplete until its new state is in
        # Never Trainer's push of the folder being saved (the final save's staging folder): push_to_hub below sends
        # output_dir once the final save has swapped the new model in.
        super().save_model(output_dir, _internal_call=True)
        if _internal_call and self.args.should_save:  # a checkpoint, whose trainer_state.json Trainer writes next
            total = {"loss_sum": loss_sum, "global_step": self.state.global_step}
            (Path(output_dir) / LOSS_TOTAL).write_text(json.dumps(total) + "\n", encoding="utf-8")
            fault_point(Path(output_dir).name)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Trainer's push of each save, uploaded from the checkpoint itself (its model, tokenizer and the code that
        config.json's auto_map names). Trainer's copies the weights into output_dir and uploads that: a revision
        without the model's code, and output_dir's previous model overwritten before the final save replaces it."""
        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        if not self.args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return  # as Trainer: skip this save while the last one is still uploading
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        if self.args.save_strategy == SaveStrategy.STEPS:
            message = f"Training in progress, step {self.state.global_step}"
        else:
            message = f"Training in progress, epoch {int(self.state.epoch)}"
        jobs = [self.upload(checkpoint_folder, message, NOT_PUSHED, run_as_future=True)]
        if self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):  # the resume state too
            last = self.args.hub_strategy == HubStrategy.CHECKPOINT
            folder = "last-checkpoint" if last else Path(checkpoint_folder).name
            jobs.append(
                self.upload(checkpoint_folder, f"{message}, checkpoint", [], path_in_repo=folder, run_as_future=True)
            )
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress(jobs)
        else:
            self.push_in_progress.jobs.extend(jobs)

    def push_to_hub(self, commit_message: str = "End of training", blocking: bool = True, **kwargs):
        """Uploads output_dir as train.py's final save left it (the model, its card): Trainer's would save the model
        into output_dir again, outside the atomic save, and write its generic card over the project's."""
        if not self.is_world_process_zero():
            return None
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        if self.hub_model_id is None:
            self.init_hf_repo()
        self._finish_current_push()
        return self.upload(self.args.output_dir, commit_message, NOT_PUSHED, run_as_future=not blocking)

    def upload(self, folder: str, message: str, ignore_patterns: list[str], **kwargs):
        return hf_api().upload_folder(
            repo_id=self.hub_model_id,
            folder_path=folder,
            commit_message=message,
            token=self.args.hub_token,
            ignore_patterns=ignore_patterns,
            revision=self.args.hub_revision,
            **kwargs,
        )


def summed_nll_per_sentence(logits: torch.Tensor | tuple, labels: torch.Tensor) -> torch.Tensor:
    """Each evaluated sentence as (sum of its target tokens' plain cross-entropy, their count): (batch, 2).

    Trainer's `preprocess_logits_for_metrics`: evaluation gathers two numbers per sentence instead of the logits."""
    logits = logits[0] if isinstance(logits, tuple) else logits  # (batch, tgt_len, vocab), then encoder outputs
    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return torch.stack((nll.sum(dim=-1), labels.ne(-100).sum(dim=-1).float()), dim=-1)


def nll_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """`eval_nll_loss`, the mean negative log-likelihood per target token without label smoothing (the figure other
    models report beside eval_loss, which is smoothed, sec. 5.4), and `eval_perplexity`, its exponential."""
    total, tokens = prediction.predictions.sum(axis=0)
    nll = float(total / tokens)
    return {"nll_loss": nll, "perplexity": math.exp(nll)}


def padding_fraction(trainer: Seq2SeqTrainer) -> float:
    """The share of pad tokens (source and target) in one epoch of this process's training batches."""
    dataset = trainer.train_dataset
    source_lengths = [len(ids) for ids in dataset["input_ids"]]
    target_lengths = [len(ids) for ids in dataset["labels"]]
    with torch.random.fork_rng():  # drawing an epoch's order here must not change training's random stream
        batches = list(trainer.get_train_dataloader().batch_sampler)
    multiple = getattr(trainer.data_collator, "pad_to_multiple_of", None)
    real = padded = 0
    for batch in batches:
        for lengths in (source_lengths, target_lengths):
            batch_lengths = [lengths[i] for i in batch]
            real += sum(batch_lengths)
            padded += len(batch_lengths) * padded_length(max(batch_lengths), multiple)
    return 1.0 - real / padded


def exact_match(trainer: Seq2SeqTrainer, dataset) -> float:
    """Share of sentences whose beam-search translation equals the reference (its tokenized target) exactly."""
    trainer.args.predict_with_generate = True
    trainer.compute_metrics = trainer.preprocess_logits_for_metrics = None  # those read logits, not translations
    output = trainer.predict(dataset, metric_key_prefix="test")  # rows in the sampler's order, labels alongside
    pad = trainer.processing_class.pad_token_id
    hypotheses, references = (
        trainer.processing_class.batch_decode(np.where(ids < 0, pad, ids), skip_special_tokens=True)
        for ids in (output.predictions, output.label_ids)
    )
    return sum(h.strip() == r.strip() for h, r in zip(hypotheses, references, strict=True)) / len(references)


def loss_before(checkpoint: str | None) -> float | None:
    """The training loss summed over the steps up to a checkpoint; None for a checkpoint saved without that sum."""
    if checkpoint is None:
        return 0.0
    try:
        return float(json.loads((Path(checkpoint) / LOSS_TOTAL).read_text(encoding="utf-8"))["loss_sum"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def train_loss_metrics(trainer: VanillaTrainer, resumed_step: int, whole_run_known: bool) -> dict:
    """The mean training loss of the whole run; where a checkpoint lacks the sum, of the resumed steps, named so."""
    steps = trainer.state.global_step
    if whole_run_known:
        return {"train_loss": trainer.loss_total() / max(steps, 1)}
    if steps == resumed_step:  # a complete run's checkpoint saved without the sum: no figure to report
        return {}
    resumed_mean = (trainer.loss_total() - trainer.loss_before) / max(steps - resumed_step, 1)
    return {f"train_loss_steps_{resumed_step + 1}_to_{steps}": resumed_mean}


def data_record(data_args: DataArguments) -> dict:
    """What the model was trained on (data_args.json beside it): eval.py's defaults."""
    record = {name: getattr(data_args, name) for name in DATA_RECORD_KEYS}
    for name in ("train_file", "validation_file", "test_file"):
        if record[name] is not None:
            record[name] = os.path.abspath(record[name])
    record["embedded_task"] = data_args.uses_embedded_task
    return record


def save_final_model(trainer: VanillaTrainer, files: dict[str, str], state_source: Path | None = None) -> None:
    """Builds the model (and `files`: name -> text) in a sibling folder, then swaps it for output_dir's by renames.

    A reader sees the old model or the new one, never a mix. Every entry of output_dir that is not the old model
    (checkpoints, logs, averaged models, other files) moves into the new folder; `finish_interrupted_save` completes
    a swap that was killed. trainer_state.json (the run's log) is the Trainer's, or a copy of `state_source`'s."""
    output_dir = Path(trainer.args.output_dir)
    staging, replaced = beside(output_dir, "saving"), beside(output_dir, "replaced")
    try:
        if trainer.is_world_process_zero() and staging.exists():
            shutil.rmtree(staging)
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(staging))  # every process takes part; the main one writes
        if trainer.is_world_process_zero():
            for name, text in files.items():
                (staging / name).write_text(text, encoding="utf-8")
            if state_source is None:
                trainer.state.save_to_json(str(staging / TRAINER_STATE))
            else:
                shutil.copyfile(state_source / TRAINER_STATE, staging / TRAINER_STATE)
            fault_point("final-save")
    except BaseException:
        if trainer.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)  # the old model, untouched, stays
        raise
    if trainer.is_world_process_zero():
        if output_dir.exists():
            output_dir.rename(replaced)
            fault_point("final-swap")
        staging.rename(output_dir)
        fault_point("final-swapped")
        if replaced.exists():
            keep_entries_of_replaced(replaced, output_dir)
    trainer.accelerator.wait_for_everyone()


def last_checkpoint_phrase(output_dir: Path) -> str:
    checkpoints = complete_checkpoints(output_dir) if output_dir.is_dir() else []
    if not checkpoints:
        return "there is no checkpoint to resume from"
    return f"the last checkpoint is {checkpoints[-1]} (continue with --resume_from_checkpoint last)"


def remove_partial_checkpoint(trainer: VanillaTrainer) -> str:
    """Removes the checkpoint a failure cut short, so that `--resume_from_checkpoint last` never picks it."""
    partial = Path(trainer.args.output_dir) / f"checkpoint-{trainer.state.global_step}"
    if trainer.is_world_process_zero() and partial.is_dir() and trainer_state(partial) is None:
        shutil.rmtree(partial, ignore_errors=True)
        return f"removed the partial {partial.name}; "
    return ""


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    model_args, data_args, args = parse_arguments(argv)
    check_arguments(model_args, args)
    if model_args.preset not in PRESETS:
        raise UsageError(f"unknown preset {model_args.preset!r}; expected one of {', '.join(PRESETS)}")
    if args.label_smoothing_factor:
        raise UsageError("--label_smoothing_factor would smooth twice; use --label_smoothing (the model config's)")
    checkpoint = check_output_dir(args)
    try:
        train_and_save(model_args, data_args, args, checkpoint, given_flags(argv))
    except KeyboardInterrupt:
        if args.process_index == 0:
            print(f"interrupted: {last_checkpoint_phrase(Path(args.output_dir))}", file=sys.stderr, flush=True)
        sys.exit(130)


def train_and_save(
    model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments, checkpoint: str | None, given: set
) -> None:
    """Trains (or continues `checkpoint`'s run) and saves the model, its card and its data record into output_dir."""
    raw = stream_raw_datasets(data_args) if args.streaming else load_raw_datasets(data_args)
    if "train" not in raw:
        raise UsageError("no training split: pass --train_file or a dataset with a 'train' split")
    output_dir = Path(args.output_dir)
    check_writable(output_dir)

    if checkpoint is not None:  # the run continues with the tokenizer and shape it started with
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        config = VanillaConfig.from_pretrained(checkpoint)
        texts = lambda: tokenizer_texts(raw, data_args, args)  # noqa: E731
        check_resume_flags(model_args, given, checkpoint, config, tokenizer, texts)
    else:
        tokenizer = build_tokenizer(model_args, raw, data_args, args)
        config = build_config(model_args, tokenizer)
    set_seed(args.seed)
    model = VanillaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        **DECODING,
        max_length=data_args.max_target_length + 1,  # + the decoder start token
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
    )
    if args.learning_rate is None:
        args.learning_rate = paper_peak_learning_rate(config.d_model, args.warmup_steps)
    if args.device.type == "cpu":
        args.dataloader_pin_memory = False  # pinned memory only speeds up copies to an accelerator
    if args.streaming:
        # Each process reads the stream and keeps its share of every batch: accelerate's default, the main process
        # reading and sending out slices, cannot stack batches padded to different lengths.
        args.accelerator_config.dispatch_batches = False

    tokenized = tokenize(raw, tokenizer, data_args, args.length_column_name)
    before = loss_before(checkpoint)
    trainer = VanillaTrainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized.get("validation"),
        processing_class=tokenizer,
        # Compiled, each new shape costs a compile: lengths rounded up to a multiple of 8 keep the shapes few.
        data_collator=DataCollatorForSeq2Seq(
            tokenizer, model=model, pad_to_multiple_of=8 if args.torch_compile else None
        ),
        loss_before=before or 0.0,
        compute_metrics=None if args.predict_with_generate else nll_metrics,
        preprocess_logits_for_metrics=None if args.predict_with_generate else summed_nll_per_sentence,
        callbacks=time_budget_callbacks(args),
    )
    padding = None if args.streaming else padding_fraction(trainer)  # a stream's batches are not known ahead
    if padding is not None and trainer.is_world_process_zero():
        batching = (
            f"train_sampling_strategy={args.train_sampling_strategy}, batch size {args.per_device_train_batch_size}"
        )
        if args.max_tokens is not None:
            batching = f"--max_tokens {args.max_tokens}"
        print(f"padding: {padding:.1%} of the tokens in an epoch's batches ({batching})")
    resumed_step = trainer_state(Path(checkpoint))["global_step"] if checkpoint is not None else 0
    with torch.random.fork_rng():  # building a dataloader to count its batches must not change the random stream
        run_steps = trainer.set_initial_training_values(args, trainer.get_train_dataloader())[-1]
    if checkpoint is not None and resumed_step >= run_steps:  # Trainer would take one more step
        run_metrics = {}
        message = f"{checkpoint} completed the run (step {resumed_step} of {run_steps}): nothing to train"
        if saved_from(output_dir, Path(checkpoint)):
            if trainer.is_world_process_zero():
                print(f"{message}; its model is saved in {output_dir}")
            return
        if trainer.is_world_process_zero():
            print(f"{message}; saving its model")
        trained = VanillaForConditionalGeneration.from_pretrained(checkpoint)
        model.load_state_dict(trained.state_dict())
        trainer.state.global_step = resumed_step
    else:
        try:
            run_metrics = trainer.train(resume_from_checkpoint=checkpoint).metrics
        except OSError as error:  # a full disk, a folder made read-only: the older model and checkpoints stay intact
            removed = remove_partial_checkpoint(trainer)
            raise UsageError(
                f"training stopped at step {trainer.state.global_step}: {error.strerror or error}; {removed}"
                f"{last_checkpoint_phrase(output_dir)}"
            ) from None
        except KeyboardInterrupt:
            remove_partial_checkpoint(trainer)
            raise
    metrics = train_loss_metrics(trainer, resumed_step, before is not None)
    speed = ("train_runtime", "train_tokens_per_second", "train_padded_tokens_per_second", "train_compiled_graphs")
    metrics.update({name: run_metrics[name] for name in speed if name in run_metrics})
    if padding is not None:
        metrics["train_padding_fraction"] = padding
    if "validation" in tokenized:
        metrics.update(trainer.evaluate())
    if args.do_predict and "test" in raw:
        metrics["test_exact_match"] = exact_match(trainer, tokenized["test"])
    metrics = {name: value for name, value in metrics.items() if isinstance(value, (int, float))}

    repo_id = trainer.hub_model_id if args.push_to_hub else args.hub_model_id or output_dir.resolve().name
    card = model_card(config.to_dict(), data_record(data_args), metrics, [], repo_id, PRESETS)
    files = {
        CARD: str(card),
        DATA_RECORD: json.dumps(data_record(data_args), indent=2) + "\n",
        "all_results.json": json.dumps(metrics, indent=4, sort_keys=True) + "\n",  # Trainer.save_metrics' format
    }
    state_source = Path(checkpoint) if checkpoint is not None and resumed_step >= run_steps else None
    try:
        save_final_model(trainer, files, state_source)
    except OSError as error:
        raise UsageError(
            f"cannot save the model into {output_dir}: {error.strerror or error}; the older model there (if any) "
            f"is intact and {last_checkpoint_phrase(output_dir)}"
        ) from None
    if trainer.is_world_process_zero():
        if "test_exact_match" in metrics:
            counted = "" if args.streaming else f" ({len(raw['test'])} sentences)"
            print(f"exact match on the test split: {metrics['test_exact_match']:.1%}{counted}")
        print(json.dumps({name: round(value, 4) for name, value in metrics.items()}))
        print(f"model saved to {args.output_dir}")
        print(f"evaluate it with: python eval.py --model {args.output_dir}")
    if args.push_to_hub:
        commit = trainer.push_to_hub()
        if trainer.is_world_process_zero():
            print(f"pushed to {commit.commit_url}")


if __name__ == "__main__":
    main()
