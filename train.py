"""Train the Transformer on a parallel corpus with Seq2SeqTrainer, with the paper's recipe (sec. 5) by default.

    python train.py --output_dir out                      # the embedded English -> German number-words task
    python train.py --train_file train.jsonl --validation_file validation.jsonl \
        --source_lang de --target_lang en --preset base --output_dir out
    python train.py recipe.yaml                           # the same arguments from one JSON or YAML file
    python train.py recipe.yaml --num_train_epochs 2      # a recipe, with flags given after it taking precedence
    torchrun --nproc_per_node 2 train.py ...              # or `accelerate launch train.py ...`: DDP, FSDP

The learning rate, sec. 5.3: lrate = d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5). transformers'
"inverse_sqrt" schedule multiplies the peak --learning_rate by min(step / warmup_steps, sqrt(warmup_steps / step)),
so a peak of (d_model * warmup_steps)^-0.5, the default, gives the paper's lrate at every optimizer step.
"""

import json
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from tokenizers import Tokenizer
from transformers import (
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    EvalPrediction,
    GenerationConfig,
    HfArgumentParser,
    PreTrainedTokenizerBase,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from modeling_vanilla import VanillaConfig, VanillaForConditionalGeneration
from vanilla_data import (
    DataArguments,
    UsageError,
    corpus_texts,
    default_vocab_size,
    exit_on_usage_error,
    load_raw_datasets,
    train_bpe_tokenizer,
    wrap_tokenizer,
)

# Model shapes. base and big are Table 3's; tiny and small are for CPUs and small corpora.
PRESETS = {
    "tiny": dict(d_model=64, num_heads=4, d_ff=256, encoder_layers=2, decoder_layers=2),
    "small": dict(d_model=256, num_heads=4, d_ff=1024, encoder_layers=3, decoder_layers=3),
    "base": dict(d_model=512, num_heads=8, d_ff=2048, encoder_layers=6, decoder_layers=6, dropout=0.1),
    "big": dict(d_model=1024, num_heads=16, d_ff=4096, encoder_layers=6, decoder_layers=6, dropout=0.3),
}
# Sec. 6.1: "beam search with a beam size of 4 and length penalty alpha = 0.6".
DECODING = dict(num_beams=4, length_penalty=0.6, early_stopping=True)
FINAL_FILES_LAST = "config.json"  # written last: a folder with a config.json holds a whole model


@dataclass
class ModelArguments:
    """The model's shape (a preset, then explicit overrides) and its tokenizer."""

    preset: str = field(default="base", metadata={"help": f"Model shape: {', '.join(PRESETS)}."})
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "A tokenizer to load; default: train a joint BPE on the training split."}
    )
    vocab_size: int | None = field(
        default=None, metadata={"help": "Size of the trained BPE; default: a quarter of the distinct words."}
    )
    d_model: int | None = field(default=None, metadata={"help": "Overrides the preset."})
    num_heads: int | None = field(default=None, metadata={"help": "Overrides the preset."})
    d_ff: int | None = field(default=None, metadata={"help": "Overrides the preset."})
    encoder_layers: int | None = field(default=None, metadata={"help": "Overrides the preset."})
    decoder_layers: int | None = field(default=None, metadata={"help": "Overrides the preset."})
    dropout: float | None = field(default=None, metadata={"help": "P_drop (sec. 5.4); default 0.1, big 0.3."})
    label_smoothing: float | None = field(default=None, metadata={"help": "epsilon_ls (sec. 5.4); default 0.1."})
    position_embedding_type: str | None = field(default=None, metadata={"help": "sinusoidal (default) or learned."})
    norm_first: bool | None = field(default=None, metadata={"help": "Pre-LN instead of the paper's post-LN."})


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


def paper_peak_learning_rate(d_model: int, warmup_steps: float) -> float:
    """Sec. 5.3 lrate at step = warmup_steps, where the "inverse_sqrt" schedule peaks: (d_model * warmup)^-0.5."""
    return (d_model * max(warmup_steps, 1)) ** -0.5


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Command-line flags, optionally after a JSON/YAML file holding flags (the command line wins)."""
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    if argv and argv[0].endswith((".json", ".yaml", ".yml")):
        parser.set_defaults(**read_recipe(argv[0], {action.dest for action in parser._actions}))
        argv = argv[1:]
    try:
        return parser.parse_args_into_dataclasses(argv)
    except ValueError as error:  # a Trainer flag combination it refuses
        raise UsageError(str(error)) from None


def read_recipe(path: str, known: set[str]) -> dict:
    """The flags held by a JSON or YAML file, refusing keys that are no flag of train.py."""
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such file")
    text = Path(path).read_text(encoding="utf-8")
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


def check_output_dir(args: TrainingArguments) -> str | None:
    """Refuses an output_dir holding another model; returns the checkpoint to resume from, if any."""
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"output_dir {output_dir} is a file, expected a folder")
    checkpoint = args.resume_from_checkpoint
    if checkpoint is not None:
        if checkpoint.lower() in ("true", "last"):
            checkpoint = get_last_checkpoint(output_dir) if output_dir.is_dir() else None
            if checkpoint is None:
                raise UsageError(f"--resume_from_checkpoint: no checkpoint-* folder in {output_dir}")
        elif not (Path(checkpoint) / "trainer_state.json").is_file():
            raise UsageError(f"--resume_from_checkpoint: {checkpoint} is not a checkpoint (no trainer_state.json)")
        return checkpoint
    held = output_dir.is_dir() and ((output_dir / "config.json").exists() or any(output_dir.glob("checkpoint-*")))
    if held and not args.overwrite_output_dir:
        raise UsageError(
            f"output_dir {output_dir} already holds a model or checkpoints; pass --overwrite_output_dir to replace "
            "it or --resume_from_checkpoint to continue it"
        )
    return None


def build_config(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase) -> VanillaConfig:
    """The preset's shape, with every explicitly given flag on top; ids from the tokenizer."""
    values = dict(PRESETS[model_args.preset])
    for name in (
        "d_model",
        "num_heads",
        "d_ff",
        "encoder_layers",
        "decoder_layers",
        "dropout",
        "label_smoothing",
        "position_embedding_type",
        "norm_first",
    ):
        if getattr(model_args, name) is not None:
            values[name] = getattr(model_args, name)
    special = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    for name, expected in special.items():
        actual = getattr(tokenizer, name)
        if actual != expected:
            raise UsageError(f"the tokenizer's {name} is {actual}, expected {expected} (VanillaConfig's)")
    try:
        return VanillaConfig(vocab_size=len(tokenizer), **values, **special, decoder_start_token_id=1)
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
    texts = corpus_texts(raw, data_args.source_lang, data_args.target_lang)
    vocab_size = model_args.vocab_size or default_vocab_size(texts)
    serialized = [
        train_bpe_tokenizer(texts, vocab_size).backend_tokenizer.to_str() if args.process_index == 0 else None
    ]
    if args.world_size > 1:
        torch.distributed.broadcast_object_list(serialized, src=0)
    return wrap_tokenizer(Tokenizer.from_str(serialized[0]))


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

    return raw.map(encode, batched=True, remove_columns=["translation"], desc="Tokenizing")


class VanillaTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer whose length-grouped sampler sees the length column (see `tokenize`)."""

    def _get_train_sampler(self, train_dataset=None):
        # Trainer drops columns the model does not take before it builds the sampler, the length column with them.
        return super()._get_train_sampler(self.train_dataset)


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
    real = padded = 0
    for batch in batches:
        for lengths in (source_lengths, target_lengths):
            batch_lengths = [lengths[i] for i in batch]
            real += sum(batch_lengths)
            padded += len(batch_lengths) * max(batch_lengths)
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


def model_card(model_args, data_args, config: VanillaConfig, metrics: dict, output_dir: str) -> str:
    data = data_args.dataset_name or data_args.train_file or "the embedded task (English -> German number words)"
    shape = ", ".join(
        f"{name} {getattr(config, name)}"
        for name in ("d_model", "num_heads", "d_ff", "encoder_layers", "decoder_layers", "vocab_size")
    )
    results = "\n".join(f"| {name} | {value:.4g} |" for name, value in metrics.items())
    return f"""---
library_name: transformers
tags: [translation, vanilla-transformer]
---
# Transformer {data_args.source_lang} -> {data_args.target_lang}

The encoder-decoder Transformer of *Attention Is All You Need* (Vaswani et al., 2017), preset
`{model_args.preset}` ({shape}), trained with `train.py` on {data}.
Decoding defaults (generation_config.json): beam size 4, length penalty 0.6 (sec. 6.1).

| metric | value |
|---|---|
{results}

```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{output_dir}")
model = AutoModelForSeq2SeqLM.from_pretrained("{output_dir}", trust_remote_code=True)
inputs = tokenizer(["..."], return_tensors="pt")
print(tokenizer.batch_decode(model.generate(**inputs), skip_special_tokens=True))
```

Evaluate: `python eval.py --model {output_dir}`
"""


def save_final_model(trainer: Seq2SeqTrainer, card: str) -> None:
    """Writes the model into a hidden folder, then moves each file into output_dir, config.json last."""
    output_dir = Path(trainer.args.output_dir)
    staging = output_dir / ".saving"
    if trainer.is_world_process_zero() and staging.exists():
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))  # every process takes part; the main one writes
    if trainer.is_world_process_zero():
        (staging / "README.md").write_text(card, encoding="utf-8")
        files = sorted(staging.iterdir(), key=lambda path: path.name == FINAL_FILES_LAST)
        for path in files:
            path.replace(output_dir / path.name)
        staging.rmdir()
    trainer.accelerator.wait_for_everyone()


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    model_args, data_args, args = parse_arguments(sys.argv[1:] if argv is None else argv)
    if model_args.preset not in PRESETS:
        raise UsageError(f"unknown preset {model_args.preset!r}; expected one of {', '.join(PRESETS)}")
    if args.label_smoothing_factor:
        raise UsageError("--label_smoothing_factor would smooth twice; use --label_smoothing (the model config's)")
    checkpoint = check_output_dir(args)
    raw = load_raw_datasets(data_args)
    if "train" not in raw:
        raise UsageError("no training split: pass --train_file or a dataset with a 'train' split")

    if checkpoint is not None:  # the run continues with the tokenizer and shape it started with
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        config = VanillaConfig.from_pretrained(checkpoint)
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
    # Checkpoints and the final folder carry both .py files and an auto_map: trust_remote_code=True loads them.
    VanillaConfig.register_for_auto_class()
    VanillaForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
    if args.learning_rate is None:
        args.learning_rate = paper_peak_learning_rate(config.d_model, args.warmup_steps)
    if args.device.type == "cpu":
        args.dataloader_pin_memory = False  # pinned memory only speeds up copies to an accelerator

    if args.overwrite_output_dir and args.process_index == 0:
        for stale in Path(args.output_dir).glob("checkpoint-*"):
            shutil.rmtree(stale)
    tokenized = tokenize(raw, tokenizer, data_args, args.length_column_name)
    trainer = VanillaTrainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized.get("validation"),
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        compute_metrics=None if args.predict_with_generate else nll_metrics,
        preprocess_logits_for_metrics=None if args.predict_with_generate else summed_nll_per_sentence,
    )
    padding = padding_fraction(trainer)
    if trainer.is_world_process_zero():
        print(
            f"padding: {padding:.1%} of the tokens in an epoch's batches "
            f"(train_sampling_strategy={args.train_sampling_strategy}, batch size {args.per_device_train_batch_size})"
        )
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = {"train_loss": train_result.training_loss, "train_padding_fraction": padding}
    if "validation" in tokenized:
        metrics.update(trainer.evaluate())
    if args.do_predict and "test" in raw:
        metrics["test_exact_match"] = exact_match(trainer, tokenized["test"])
    metrics = {name: value for name, value in metrics.items() if isinstance(value, (int, float))}
    trainer.save_metrics("all", metrics)

    save_final_model(trainer, model_card(model_args, data_args, config, metrics, args.output_dir))
    if trainer.is_world_process_zero():
        if "test_exact_match" in metrics:
            print(f"exact match on the test split: {metrics['test_exact_match']:.1%} ({len(raw['test'])} sentences)")
        print(json.dumps({name: round(value, 4) for name, value in metrics.items()}))
        print(f"model saved to {args.output_dir}")
        print(f"evaluate it with: python eval.py --model {args.output_dir}")


if __name__ == "__main__":
    main()
