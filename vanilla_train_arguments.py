"""train.py's arguments: a flag per VanillaConfig field, the paper's recipe as TrainingArguments, launch checks.

The learning rate, sec. 5.3: lrate = d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5). transformers'
"inverse_sqrt" schedule multiplies the peak --learning_rate by min(step / warmup_steps, sqrt(warmup_steps / step)),
so a peak of (d_model * warmup_steps)^-0.5, the default, gives the paper's curve. Its step counts from 0, the
paper's from 1: the k-th update runs at the paper's lrate of step k - 1, and the first, as in every transformers
warmup, at 0.
"""

import inspect
import math
import os
import sys
from dataclasses import field, make_dataclass

import torch
from accelerate.utils import DynamoBackend
from transformers import (
    AutoTokenizer,
    HfArgumentParser,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Seq2SeqTrainingArguments,
    Trainer,
    get_scheduler,
)
from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations
from transformers.training_args import ParallelMode
from transformers.utils import is_liger_kernel_available, is_torch_bf16_gpu_available, is_torch_xla_available

from configuration_vanilla import BOS_TOKEN_ID, EOS_TOKEN_ID, PAD_TOKEN_ID, PRESETS, VanillaConfig
from modeling_vanilla import VanillaForConditionalGeneration
from vanilla_cli import (
    RECIPE_SUFFIXES,
    UsageError,
    UsageErrorParser,
    argument_dataclass,
    cpu_bf16_problem,
    documented_arguments,
    first_line,
    given_flags,
    read_recipe,
    refuse_unknown_arguments,
)
from vanilla_corpus import TrainDataArguments
from vanilla_metrics import BLEU_TOKENIZERS
from vanilla_tokenizer import train_bpe_tokenizer

# VanillaConfig arguments that are no flag: the tokenizer fixes the vocabulary and the special ids (--vocab_size sizes
# the BPE train.py learns), and the cache is a decoding matter.
NOT_FLAGS = ("vocab_size", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


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
            "attn_implementation",
            str | None,
            field(
                default=None,
                metadata={
                    "help": "Attention kernel for training (eager, sdpa, ...); default: sdpa, or eager for --bf16 "
                    "on a CPU, where SDPA's bf16 backward is the slower one. Not saved: a loaded model uses sdpa."
                },
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


@argument_dataclass
class TrainingArguments(Seq2SeqTrainingArguments):
    """Trainer's arguments with the paper's recipe (sec. 5.3) as defaults, --overwrite_output_dir, and the help of
    the Trainer flags that train.py reads its own way.

    Args:
        learning_rate: Peak learning rate; default (d_model * warmup_steps)^-0.5, the paper's.
        lr_scheduler_type: Sec. 5.3: warmup, then 1/sqrt(step).
        warmup_steps: Sec. 5.3: warmup_steps = 4000.
        adam_beta2: Sec. 5.3: beta_2 = 0.98.
        adam_epsilon: Sec. 5.3: epsilon = 1e-9.
        train_sampling_strategy: Batches of similar lengths cut padding (sec. 5.1).
        overwrite_output_dir: Train into an output_dir that holds a finished model: its checkpoints go once the data
            is read, the model when the new one is saved. An unfinished run's checkpoints are refused: resume them.
        ddp_find_unused_parameters: DDP's find_unused_parameters: False, as every parameter of the model takes part in
            each step (True walks the autograd graph every step looking for unused ones, and warns that there are none).
        max_train_seconds: Stop training after this many seconds (evaluations and saves included).
        save_at_seconds: Also keep the model after this many seconds, in output_dir/model-at-<N>s.
        max_tokens: Batches of at most this many padded source + target tokens, of pairs of similar lengths (sec. 5.1:
            about 25000 + 25000), in place of --per_device_train_batch_size sentences.
        streaming: Read --dataset_name or the data files as training consumes them, tokenizing on the fly, for corpora
            too large to load (or to wait for); needs a --max_steps budget.
        preprocessing_num_workers: Processes that tokenize the corpus before training (datasets' map, num_proc);
            default: this process alone.
        bleu_tokenize: sacreBLEU's tokenizer for --predict_with_generate's and --do_predict's BLEU (default:
            sacreBLEU's choice for --target_lang: zh, ja-mecab or ko-mecab for those languages, else 13a).
        resume_from_checkpoint: A checkpoint-* folder to continue the run from, or last: the newest complete
            checkpoint in output_dir.
        generation_max_length: The output limit of --predict_with_generate, in tokens (default: sec. 6.1's, as
            eval.py's: the batch's longest input + 50).
        label_smoothing_factor: Must stay 0: the model's own loss is smoothed (--label_smoothing, sec. 5.4), and
            Trainer would smooth it again.
        do_train: Not read: train.py always trains.
        do_eval: Not read: train.py evaluates on the validation split whenever there is one (after training, and as
            --eval_strategy says).
    """

    learning_rate: float | None = None
    lr_scheduler_type: str = "inverse_sqrt"
    warmup_steps: float = 4000
    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-9
    train_sampling_strategy: str = field(default="group_by_length", metadata={"choices": ["random", "group_by_length"]})
    overwrite_output_dir: bool = False
    ddp_find_unused_parameters: bool | None = False
    max_train_seconds: float | None = None
    save_at_seconds: float | None = None
    max_tokens: int | None = None
    streaming: bool = False
    preprocessing_num_workers: int | None = None
    bleu_tokenize: str | None = field(default=None, metadata={"choices": BLEU_TOKENIZERS})
    # Trainer's fields that train.py reads its own way: redeclared only for their help.
    resume_from_checkpoint: str | None = None
    generation_max_length: int | None = None
    label_smoothing_factor: float = 0.0
    do_train: bool = False
    do_eval: bool = False

    def __post_init__(self):
        if self.bf16 or self.bf16_full_eval:
            if not (self.use_cpu or is_torch_bf16_gpu_available() or is_torch_xla_available()):
                if torch.accelerator.is_available():  # a GPU without bf16: say so rather than train on the CPU
                    raise ValueError(
                        f"--bf16: this {torch.accelerator.current_accelerator().type} device has no bf16 support; "
                        "drop --bf16 (or use --fp16), or pass --use_cpu true to train on the CPU"
                    )
                self.use_cpu = True  # Trainer refuses bf16 without an accelerator unless told to train on the CPU
            problem = cpu_bf16_problem() if self.use_cpu else None
            if problem:
                print(
                    f"warning: --bf16: {problem}, so bf16 autocast would train slower than float32: training in "
                    "float32",
                    file=sys.stderr,
                )
                self.bf16 = self.bf16_full_eval = False
        if self.resume_from_checkpoint:  # a recipe has no shell to expand `~`; TrainingArguments expands output_dir's
            self.resume_from_checkpoint = os.path.expanduser(self.resume_from_checkpoint)
        super().__post_init__()


def paper_peak_learning_rate(d_model: int, warmup_steps: float) -> float:
    """Sec. 5.3 lrate at step = warmup_steps, where the "inverse_sqrt" schedule peaks: (d_model * warmup)^-0.5."""
    return (d_model * max(warmup_steps, 1)) ** -0.5


DESCRIPTION = (
    "Train the Transformer on a parallel corpus with Seq2SeqTrainer, with the paper's recipe (sec. 5) by default; "
    "the flags may come from a JSON or YAML recipe file given first, those after it taking precedence."
)


class ArgumentParser(UsageErrorParser, HfArgumentParser):
    """HfArgumentParser whose errors are usage errors."""


def argument_parser() -> HfArgumentParser:
    """train.py's flags: the model's, the data's and Trainer's."""
    return ArgumentParser((ModelArguments, TrainDataArguments, TrainingArguments), description=DESCRIPTION)


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, TrainDataArguments, TrainingArguments]:
    """Command-line flags, optionally after a JSON/YAML file holding flags (the command line wins)."""
    parser = argument_parser()
    flags = argv
    if argv and argv[0].endswith(RECIPE_SUFFIXES):
        parser.set_defaults(**read_recipe(argv[0], parser))
        flags = argv[1:]
    recipe = f"a recipe file ({', '.join(RECIPE_SUFFIXES)})"
    refuse_unknown_arguments(parser, flags, "train.py", f"--flag value pairs, after {recipe} if any")
    on_cpus = data_parallel_on_cpus(parser, flags)
    try:
        model_args, data_args, args = parser.parse_args_into_dataclasses(flags)
    except ValueError as error:  # a Trainer flag combination it refuses
        raise UsageError(str(error)) from None
    if launched_processes() > 1 and args.parallel_mode != ParallelMode.DISTRIBUTED:
        # Only the flags given: on CPUs, gloo is train.py's default (data_parallel_on_cpus).
        given = given_flags(argument_parser(), argv)
        named = [f"--{name} {getattr(args, name)}" for name in ("use_cpu", "ddp_backend") if name in given]
        raise UsageError(
            f"launched as {launched_processes()} processes, but Trainer would not train them data-parallel "
            f"({', '.join(named)}); drop {'it' if len(named) == 1 else 'those flags'}"
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


# Trainer's numbers that torch refuses only once training starts (a traceback), or that it takes as they come: a
# nan or infinite rate, a negative norm that turns clipping off. Each with the values it takes and how to say them.
TRAINER_NUMBERS = {
    "learning_rate": (lambda value: 0 < value < math.inf, "a positive number"),
    "adam_beta1": (lambda value: 0 <= value < 1, "a number in [0, 1)"),
    "adam_beta2": (lambda value: 0 <= value < 1, "a number in [0, 1)"),
    "adam_epsilon": (lambda value: 0 <= value < math.inf, "a number >= 0"),
    "weight_decay": (lambda value: 0 <= value < math.inf, "a number >= 0"),
    "max_grad_norm": (lambda value: 0 <= value < math.inf, "a number >= 0 (0 clips nothing)"),
    "warmup_steps": (lambda value: 0 <= value < math.inf, "a number >= 0 (below 1: a fraction of the steps)"),
    "num_train_epochs": (math.isfinite, "a finite number"),
    "max_train_seconds": (lambda value: 0 < value < math.inf, "a positive number of seconds"),
    "save_at_seconds": (lambda value: 0 < value < math.inf, "a positive number of seconds"),
    "seed": (lambda value: 0 <= value < 2**32, "an integer in [0, 2^32)"),
    "data_seed": (lambda value: 0 <= value < 2**32, "an integer in [0, 2^32)"),
    "eval_accumulation_steps": (lambda value: value >= 1, "a positive integer"),
    "dataloader_num_workers": (lambda value: value >= 0, "an integer >= 0 (0 loads in the main process)"),
    "dataloader_prefetch_factor": (lambda value: value >= 1, "a positive integer"),
    "generation_num_beams": (lambda value: value >= 1, "a positive integer"),
    "generation_max_length": (lambda value: value >= 1, "a positive integer"),
}


# What an evaluation during training reports (eval_<name>): the loss and the unsmoothed loss, or with
# --predict_with_generate the loss and the scores of the generated translations (vanilla_trainer.nll_metrics,
# translation_metrics); --metric_for_best_model names one of them.
EVALUATION_METRICS = ("loss", "nll_loss", "perplexity")
GENERATION_METRICS = ("loss", "bleu", "chrf", "gen_len")


def check_arguments(model_args: ModelArguments, args: TrainingArguments) -> None:
    """Refuses values that Trainer would crash on later or silently turn into a run that trains nothing."""
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} is {getattr(args, name)}; expected a positive integer")
    for name in ("max_tokens", "preprocessing_num_workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name} is {getattr(args, name)}; expected a positive integer")
    for name, (valid, expected) in TRAINER_NUMBERS.items():
        if getattr(args, name) is not None and not valid(getattr(args, name)):
            raise UsageError(f"--{name} is {getattr(args, name)}; expected {expected}")
    for name in args.report_to or []:  # Trainer would fail once the data is tokenized
        if name not in (*INTEGRATION_TO_CALLBACK, "all", "none"):
            raise UsageError(
                f"--report_to {name}: expected some of {', '.join(INTEGRATION_TO_CALLBACK)}, or all or none"
            )
        if name in INTEGRATION_TO_CALLBACK and name not in get_available_reporting_integrations():
            raise UsageError(f"--report_to {name}: its library is not installed; install it, or drop {name}")
    backends = [backend.value.lower() for backend in DynamoBackend]
    if args.torch_compile_backend is not None and args.torch_compile_backend.lower() not in backends:
        raise UsageError(f"--torch_compile_backend {args.torch_compile_backend}: expected one of {', '.join(backends)}")
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
    if args.train_sampling_strategy == "random" and args.max_tokens is not None:
        raise UsageError(
            "--max_tokens batches pairs of similar lengths (sec. 5.1), which --train_sampling_strategy random would "
            "not: drop one of them"
        )
    if args.auto_find_batch_size and args.max_tokens is not None:  # Trainer's retry would rebuild the same batches
        raise UsageError(
            "--auto_find_batch_size retries with a smaller --per_device_train_batch_size, which --max_tokens batches "
            "do not use: lower --max_tokens instead, or drop one of them"
        )
    if args.dataloader_drop_last and args.max_tokens is not None:  # Trainer hands a batch sampler no drop_last
        raise UsageError(
            "--dataloader_drop_last drops an epoch's last batch short of --per_device_train_batch_size pairs, and "
            "--max_tokens batches are packed to a token budget, which Trainer leaves whole: drop one of them"
        )
    if args.streaming and args.preprocessing_num_workers is not None:
        raise UsageError(
            "--preprocessing_num_workers tokenizes the corpus before training, and --streaming tokenizes it as "
            "training reads it: drop one of them"
        )
    if args.save_strategy == "best" and args.metric_for_best_model is None:  # Trainer would refuse it after tokenizing
        raise UsageError(
            "--save_strategy best saves a checkpoint where --metric_for_best_model improves: name one (loss, or bleu "
            "with --predict_with_generate)"
        )
    if args.save_strategy == "best" and args.eval_strategy == "no":  # Trainer would save no checkpoint, silently
        raise UsageError(
            "--save_strategy best saves a checkpoint when an evaluation finds a new best, and --eval_strategy no "
            "evaluates never: pass --eval_strategy steps or epoch, or another --save_strategy"
        )
    if args.metric_for_best_model is not None:  # Trainer would raise a KeyError at the first evaluation
        reported = GENERATION_METRICS if args.predict_with_generate else EVALUATION_METRICS
        if args.prediction_loss_only:
            reported = ("loss",)
        metric = args.metric_for_best_model.removeprefix("eval_")
        if metric not in reported:
            needs = "" if args.predict_with_generate else "; bleu, chrf and gen_len need --predict_with_generate"
            if args.prediction_loss_only:
                needs = " with --prediction_loss_only"
            raise UsageError(
                f"--metric_for_best_model {args.metric_for_best_model}: an evaluation reports "
                f"{', '.join(reported)}{needs}"
            )
        if metric == "perplexity":  # Trainer takes lower as better only for names ending in "loss"
            args.greater_is_better = False
    if args.bleu_tokenize is not None and not (args.predict_with_generate or args.do_predict):
        raise UsageError(
            f"--bleu_tokenize {args.bleu_tokenize} applies to the BLEU of --predict_with_generate or --do_predict; "
            "pass one of them, or drop it"
        )
    if not args.eval_do_concat_batches:
        raise UsageError(
            "--eval_do_concat_batches false hands the metrics one list per batch; train.py's metrics take the "
            "evaluation whole: drop it"
        )
    if args.use_liger_kernel and not is_liger_kernel_available():  # Trainer would fail once the data is tokenized
        raise UsageError("--use_liger_kernel: liger-kernel is not installed; install it, or drop the flag")
    if args.batch_eval_metrics:
        raise UsageError("--batch_eval_metrics: train.py's metrics score the whole evaluation at once; drop it")
    check_optimizer_and_schedule(args)
    if args.save_strategy == "steps" and args.save_steps <= 0:
        raise UsageError(f"--save_steps is {args.save_steps} with --save_strategy steps; expected a positive number")
    if model_args.vocab_size is not None and model_args.tokenizer_name:
        raise UsageError("--vocab_size sizes the BPE that train.py learns; it cannot resize --tokenizer_name")
    if None not in (args.max_train_seconds, args.save_at_seconds) and args.save_at_seconds >= args.max_train_seconds:
        raise UsageError(
            f"--save_at_seconds ({args.save_at_seconds}) must be less than --max_train_seconds "
            f"({args.max_train_seconds}), or no model is kept"
        )
    config_overrides(model_args)  # a malformed --config_overrides fails before the data is loaded
    if model_args.attn_implementation is not None:  # so does a kernel this machine cannot run, tried on a tiny model
        probe = VanillaConfig(vocab_size=8, d_model=4, num_heads=1, d_ff=4, encoder_layers=1, decoder_layers=1)
        set_attention(VanillaForConditionalGeneration(probe), model_args.attn_implementation)


def check_optimizer_and_schedule(args: TrainingArguments) -> None:
    """--optim and --lr_scheduler_type (with --lr_scheduler_kwargs) built on a probe parameter, as Trainer will build
    them after the data is tokenized: a missing library or argument fails now, as a usage error."""
    probe = torch.nn.Linear(1, 1)
    try:
        Trainer.get_optimizer_cls_and_kwargs(args, probe)
    except (ImportError, ValueError) as error:
        raise UsageError(f"--optim {getattr(args.optim, 'value', args.optim)}: {first_line(error)}") from None
    try:
        get_scheduler(
            args.lr_scheduler_type,
            optimizer=torch.optim.SGD(probe.parameters(), lr=1.0),
            num_warmup_steps=1,
            num_training_steps=2,
            scheduler_specific_kwargs=args.lr_scheduler_kwargs,
        )
    except (ImportError, ValueError, TypeError) as error:
        schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
        raise UsageError(f"--lr_scheduler_type {schedule}: {first_line(error)}") from None
    schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    if schedule == "inverse_sqrt" and args.warmup_steps == 0 and "timescale" not in (args.lr_scheduler_kwargs or {}):
        raise UsageError(  # transformers would then decay over a timescale of 10,000 steps: a rate nearly flat
            "--warmup_steps 0 with --lr_scheduler_type inverse_sqrt: sec. 5.3's rate step^-0.5 needs a warmup; "
            "give --warmup_steps a positive number, or --lr_scheduler_kwargs '{\"timescale\": N}'"
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


def set_attention(model: VanillaForConditionalGeneration, attention: str) -> None:
    """`model.set_attn_implementation(attention)`, a kernel that transformers refuses being one usage error."""
    try:
        model.set_attn_implementation(attention)
    except (ValueError, ImportError) as error:
        raise UsageError(f"--attn_implementation {attention}: {first_line(error)}") from None


def training_attention(model_args: ModelArguments, args: TrainingArguments) -> str:
    """The attention kernel to train with: the flag's, else eager for bf16 on a CPU (BENCHMARKS.md), else sdpa."""
    if model_args.attn_implementation is not None:
        return model_args.attn_implementation
    return "eager" if args.bf16 and args.device.type == "cpu" else "sdpa"


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
