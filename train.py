"""Train the Transformer on a parallel corpus with Seq2SeqTrainer, with the paper's recipe (sec. 5) by default.

    python train.py --output_dir out                      # the embedded English -> German number-words task
    python train.py --train_file train.jsonl --validation_file validation.jsonl \
        --source_lang de --target_lang en --preset base --output_dir out
    python train.py recipe.yaml                           # the same arguments from one JSON or YAML file
    python train.py recipe.yaml --num_train_epochs 2      # a recipe, with flags given after it taking precedence
    torchrun --nproc_per_node 2 train.py ...              # data-parallel (DDP); on CPUs with the gloo backend
    accelerate launch --multi_gpu --num_processes 2 train.py ...            # the same through accelerate
    accelerate launch --config_file recipes/accelerate_fsdp.yaml train.py ...  # FSDP, on GPUs
"""

import json
import signal
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, GenerationConfig, set_seed

from configuration_vanilla import PRESETS
from modeling_vanilla import VanillaConfig, VanillaForConditionalGeneration
from vanilla_batching import batching_record, resumed_batching_warning
from vanilla_cli import (
    Terminated,
    UsageError,
    avoid_cudnn_attention,
    eval_command,
    eval_launcher,
    exit_on_usage_error,
    first_line,
    given_flags,
    sigterm_as_interrupt,
)
from vanilla_corpus import TrainDataArguments, first_samples, load_raw_datasets, stream_raw_datasets
from vanilla_data_record import DATA_RECORD, data_record, resume_data
from vanilla_files import BATCHING_RECORD, TRAINER_STATE, trainer_state
from vanilla_hub import CARD, card_text, model_card
from vanilla_metrics import load_metrics
from vanilla_output_dir import (
    best_checkpoint,
    check_output_dir,
    check_output_dir_writable,
    last_checkpoint_phrase,
    release_output_dir,
    remove_if_empty,
    remove_partial_checkpoint,
    remove_replaced_run,
    save_final_model,
    saved_from,
)
from vanilla_time_budget import time_budget_callbacks
from vanilla_tokenizer import build_tokenizer, evaluation_splits_read_whole, tokenize_once_per_machine, tokenizer_texts
from vanilla_train_arguments import (
    ModelArguments,
    TrainingArguments,
    argument_parser,
    build_config,
    check_arguments,
    check_resume_flags,
    paper_peak_learning_rate,
    parse_arguments,
    set_attention,
    training_attention,
)
from vanilla_trainer import (
    VanillaTrainer,
    decoding_metrics,
    diverged_warning,
    loss_before,
    nll_metrics,
    padding_fraction,
    predict_metrics,
    resumed_stream_warning,
    summed_nll_per_sentence,
    train_loss_metrics,
    translation_metrics,
)

# Sec. 6.1: "beam search with a beam size of 4 and length penalty alpha = 0.6". generate() divides by length^alpha;
# the paper's penalty (GNMT's) is ((5 + length) / 6)^alpha, with the same alpha.
DECODING = dict(num_beams=4, length_penalty=0.6, early_stopping=True)


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    model_args, data_args, args = parse_arguments(argv)
    check_arguments(model_args, args)
    if model_args.preset not in PRESETS:
        raise UsageError(f"unknown preset {model_args.preset!r}; expected one of {', '.join(PRESETS)}")
    if args.label_smoothing_factor:
        raise UsageError("--label_smoothing_factor would smooth twice; use --label_smoothing (the model config's)")
    output_dir = Path(args.output_dir)
    new_folder = not output_dir.exists()
    try:
        with sigterm_as_interrupt():
            checkpoint = check_output_dir(args)
            train_and_save(model_args, data_args, args, checkpoint, given_flags(argument_parser(), argv))
    except KeyboardInterrupt as stop:
        if args.process_index == 0:
            print(f"interrupted: {last_checkpoint_phrase(output_dir)}", file=sys.stderr, flush=True)
        sys.exit(128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT))
    finally:
        release_output_dir(output_dir)
        if new_folder and args.process_index == 0:
            remove_if_empty(output_dir)  # a run stopped before it wrote anything leaves no folder behind


def train_and_save(
    model_args: ModelArguments,
    data_args: TrainDataArguments,
    args: TrainingArguments,
    checkpoint: str | None,
    given: set,
) -> None:
    """Trains (or continues `checkpoint`'s run) and saves the model, its card and its data record into output_dir."""
    if checkpoint is not None:
        resume_data(data_args, given, Path(checkpoint))
    raw = first_samples(stream_raw_datasets(data_args) if args.streaming else load_raw_datasets(data_args), data_args)
    record = data_record(data_args)  # once loaded: the embedded task's languages are filled in
    if "train" not in raw:
        raise UsageError("no training split: pass --train_file or a dataset with a 'train' split")
    if args.do_predict and "test" not in raw:
        raise UsageError(
            "--do_predict translates the test split, and the data has none: pass --test_file (or a dataset with a "
            "'test' split), or drop --do_predict"
        )
    if data_args.max_predict_samples is not None and not args.do_predict:
        raise UsageError(
            f"--max_predict_samples {data_args.max_predict_samples} cuts the test split that --do_predict translates: "
            "pass --do_predict, or drop it"
        )
    if data_args.max_eval_samples is not None and "validation" not in raw:
        raise UsageError(
            f"--max_eval_samples {data_args.max_eval_samples} cuts the validation split, and the data has none: pass "
            "--validation_file (or a dataset with a 'validation' split), or drop it"
        )
    scoring = None  # sacreBLEU and chrF, loaded before training: a tokenizer that cannot load fails now, not after it
    if args.predict_with_generate or args.do_predict:
        scoring = load_metrics(target_lang=data_args.target_lang, bleu_tokenize=args.bleu_tokenize)
    strategy = getattr(args.eval_strategy, "value", args.eval_strategy)
    if strategy != "no" and "validation" not in raw:
        raise UsageError(
            f"--eval_strategy {strategy} evaluates on a validation split, and the data has none: pass "
            "--validation_file (or a dataset with a 'validation' split), or --eval_strategy no"
        )
    if args.eval_on_start and "validation" not in raw:  # Trainer would raise once training starts
        raise UsageError(
            "--eval_on_start evaluates on a validation split before training, and the data has none: pass "
            "--validation_file (or a dataset with a 'validation' split), or drop it"
        )
    output_dir = Path(args.output_dir)
    check_output_dir_writable(output_dir)

    if checkpoint is not None:  # the run continues with the tokenizer and shape it started with
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        config = VanillaConfig.from_pretrained(checkpoint)
        texts = lambda: tokenizer_texts(raw, data_args, args)  # noqa: E731
        check_resume_flags(model_args, given, checkpoint, config, tokenizer, texts)
    else:
        tokenizer = build_tokenizer(model_args, raw, data_args, args)
        config = build_config(model_args, tokenizer)
    longest = max(data_args.max_source_length, data_args.max_target_length)
    if config.position_embedding_type == "learned" and longest > config.max_position_embeddings:
        raise UsageError(
            f"--max_source_length / --max_target_length ({data_args.max_source_length} / "
            f"{data_args.max_target_length}) exceed the {config.max_position_embeddings} learned positions "
            "(--max_position_embeddings): raise it, or lower the lengths"
        )
    avoid_cudnn_attention()  # batches of many shapes
    set_seed(args.seed)
    model = VanillaForConditionalGeneration(config)
    set_attention(model, training_attention(model_args, args))
    model.generation_config = GenerationConfig(
        **DECODING,
        max_length=data_args.max_target_length + 1,  # + the decoder start token
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
    )
    if args.device.type == "cpu":
        args.dataloader_pin_memory = False  # pinned memory only speeds up copies to an accelerator
    if args.streaming:
        # Each process reads the stream and keeps its share of every batch: accelerate's default, the main process
        # reading and sending out slices, cannot stack batches padded to different lengths.
        args.accelerator_config.dispatch_batches = False

    tokenized = tokenize_once_per_machine(raw, tokenizer, data_args, args)
    if args.streaming:
        tokenized = evaluation_splits_read_whole(tokenized)
    remove_replaced_run(args, checkpoint)
    before = loss_before(checkpoint)
    pad_to_multiple_of = 8 if args.torch_compile else None
    batched_by = batching_record(args, pad_to_multiple_of)
    compute_metrics = translation_metrics(tokenizer, scoring) if args.predict_with_generate else nll_metrics
    try:
        trainer = VanillaTrainer(
            model=model,
            args=args,
            train_dataset=tokenized["train"],
            eval_dataset=tokenized.get("validation"),
            processing_class=tokenizer,
            # Compiled, each new shape costs a compile: lengths rounded up to a multiple of 8 keep the shapes few.
            data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, pad_to_multiple_of=pad_to_multiple_of),
            loss_before=before,
            checkpoint_files={
                DATA_RECORD: json.dumps(record, indent=2) + "\n",
                BATCHING_RECORD: json.dumps(batched_by, indent=2) + "\n",
            },
            compute_metrics=compute_metrics,
            preprocess_logits_for_metrics=None if args.predict_with_generate else summed_nll_per_sentence,
            callbacks=time_budget_callbacks(args),
        )
    except (ImportError, OSError, ValueError) as error:  # Trainer's checks of its arguments, of what is installed
        raise UsageError(f"cannot set up Trainer: {first_line(error)}") from None
    with torch.random.fork_rng():  # building a dataloader, drawing an epoch's order must not change training's stream
        train_dataloader = trainer.get_train_dataloader()
        if not args.streaming and len(train_dataloader) == 0:  # only --dataloader_drop_last leaves no batch
            raise UsageError(empty_epoch_message(len(tokenized["train"]), args))
        run_steps = trainer.set_initial_training_values(args, train_dataloader)[-1]
        # A stream's batches are not known ahead.
        padding = None if args.streaming else padding_fraction(trainer, train_dataloader)
    if args.learning_rate is None:  # the optimizer is built when training starts; --warmup_steps 0.1 is a fraction
        args.learning_rate = paper_peak_learning_rate(config.d_model, args.get_warmup_steps(run_steps))
    if padding is not None and trainer.is_world_process_zero():
        batching = (
            f"train_sampling_strategy={args.train_sampling_strategy}, batch size {args.per_device_train_batch_size}"
        )
        if args.max_tokens is not None:  # given as a flag, or in a recipe: named as its setting, as the others
            batching = f"max_tokens={args.max_tokens}"
        print(f"padding: {padding:.1%} of the tokens in an epoch's batches ({batching})")
    warning = resumed_batching_warning(Path(checkpoint), batched_by) if checkpoint is not None else None
    if warning is not None and trainer.is_world_process_zero():
        print(warning, file=sys.stderr)
    warning = resumed_stream_warning(Path(checkpoint)) if checkpoint is not None and args.streaming else None
    if warning is not None and trainer.is_world_process_zero():
        print(warning, file=sys.stderr)
    resumed = trainer_state(Path(checkpoint)) if checkpoint is not None else {"global_step": 0}
    resumed_step = resumed["global_step"]
    planned = resumed.get("max_steps")
    if planned and planned != run_steps and trainer.is_world_process_zero():  # Trainer resumes with the flags given
        print(
            f"note: {checkpoint}'s run planned {planned} steps ({TRAINER_STATE} in it); with the flags given, training "
            f"goes to step {run_steps}: pass the run's own flags (its recipe first) to end it as planned",
            file=sys.stderr,
        )
    if checkpoint is not None and resumed_step >= run_steps:  # Trainer would take one more step
        run_metrics = {}
        message = f"{checkpoint} completed the run (step {resumed_step} of {run_steps}): nothing to train"
        best = best_checkpoint(Path(checkpoint)) if args.load_best_model_at_end else None
        source = best or Path(checkpoint)  # as Trainer ends a run: with the best model, where it keeps one
        if saved_from(output_dir, source):
            if trainer.is_world_process_zero():
                print(f"{message}; its model is saved in {output_dir}")
                if args.do_predict:
                    # The saved data_args.json may name another test file, or none: name the one given.
                    test = ("--test_file", data_args.test_file) if data_args.test_file else ()
                    print(
                        "note: --do_predict scores a run's model as it finishes; score this one with: "
                        f"{eval_command('--model', output_dir, *test, launcher=eval_launcher())}",
                        file=sys.stderr,
                    )
            return
        if trainer.is_world_process_zero():
            print(f"{message}; saving its model" + (f" (the best: {best.name})" if best else ""))
        trained = VanillaForConditionalGeneration.from_pretrained(source)
        model.load_state_dict(trained.state_dict())
        trainer.state.global_step, trainer.state.epoch = resumed_step, resumed.get("epoch")
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
    metrics = train_loss_metrics(trainer, resumed_step)
    speed = ("train_runtime", "train_tokens_per_second", "train_padded_tokens_per_second", "train_compiled_graphs")
    metrics.update({name: run_metrics[name] for name in speed if name in run_metrics})
    if padding is not None:
        metrics["train_padding_fraction"] = padding
    if "validation" in tokenized:  # with the number of pairs scored, as run_translation.py records it
        metrics.update(trainer.evaluate(), eval_samples=len(tokenized["validation"]))
    if args.do_predict:
        metrics.update(predict_metrics(trainer, tokenized["test"], scoring))
    # Results only: Trainer's evaluation of a model that it has not trained adds the time it took to set it up.
    metrics = {
        name: value
        for name, value in metrics.items()
        if isinstance(value, (int, float)) and not name.endswith("model_preparation_time")
    }
    for prefix in ("eval", "test"):  # generated scores say how they were decoded: the flag may differ from the saved
        if f"{prefix}_bleu" in metrics:
            metrics.update(decoding_metrics(trainer, prefix))

    repo_id = trainer.hub_model_id if args.push_to_hub else args.hub_model_id or output_dir.resolve().name
    card = model_card(config.to_dict(), model.generation_config.to_dict(), record, metrics, [], repo_id, PRESETS)
    files = {
        CARD: card_text(card),
        DATA_RECORD: trainer.checkpoint_files[DATA_RECORD],
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
            print(
                f"test split ({len(tokenized['test'])} sentences): BLEU {metrics['test_bleu']:.2f}, "
                f"chrF {metrics['test_chrf']:.2f}, exact match {metrics['test_exact_match']:.1%}"
            )
        print(json.dumps({name: round(value, 4) for name, value in metrics.items()}))
        print(f"model saved to {args.output_dir}")
        print(end_of_run_command(args.output_dir, raw))
        warning = diverged_warning(trainer.model)
        if warning is not None:  # last, where it is read
            print(warning, file=sys.stderr)
    if args.push_to_hub:
        commit = trainer.push_to_hub()
        if trainer.is_world_process_zero():
            print(f"pushed to {commit.commit_url}")
            if trainer.failed_pushes:
                print(
                    f"warning: the final model is on the Hub, but not every checkpoint: pushing "
                    f"{', '.join(trainer.failed_pushes)} failed (above)",
                    file=sys.stderr,
                )


def empty_epoch_message(pairs: int, args: TrainingArguments) -> str:
    """Why an epoch has no batch: --dataloader_drop_last drops the one it has, short of a batch on every process."""
    batch = f"--per_device_train_batch_size {args.per_device_train_batch_size}"
    if args.world_size > 1:
        batch += f" on each of {args.world_size} processes"
    split = f"the training split's {pairs} pair{'s' * (pairs != 1)}"
    return (
        f"--dataloader_drop_last drops every batch: {split} fill none of {batch}; lower the batch size, or drop "
        "--dataloader_drop_last"
    )


def end_of_run_command(output_dir: str, raw: dict) -> str:
    """The line that says how to use the saved model: score it on the test split of its data_args.json, else on the
    validation split; with neither, eval.py has nothing to score, and translates what it is given."""
    launcher = eval_launcher()
    if "test" in raw:
        return f"evaluate it with: {eval_command('--model', output_dir, launcher=launcher)}"
    if "validation" in raw:
        return f"evaluate it with: {eval_command('--model', output_dir, '--split', 'validation', launcher=launcher)}"
    return f"translate with: {eval_command('translate', '--model', output_dir, launcher=launcher)}"


if __name__ == "__main__":
    main()
