"""Seq2SeqTrainer for this model: token-budget batches, the run's loss total, tokens/s, and the metrics it reports."""

import copy
import json
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import EvalPrediction, Seq2SeqTrainer, TrainerCallback
from transformers.integrations.neftune import neftune_post_forward_hook
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import HubStrategy, SaveStrategy, has_length
from transformers.utils.hub import PushInProgress, hf_api

from vanilla_batching import (
    EpochSeededLengthGroupedSampler,
    TokenBudgetBatchSampler,
    TokenCounter,
    padded_length,
    sequence_lengths,
)
from vanilla_cli import UsageError, first_line
from vanilla_data_record import DATA_RECORD
from vanilla_files import LOSS_TOTAL, TRAINER_STATE, trainer_state
from vanilla_hub import HUB_ERRORS, NOT_PUSHED
from vanilla_metrics import score
from vanilla_output_dir import fault_point
from vanilla_translation import MAX_LENGTH_OFFSET, non_finite_weights, output_limit, position_limit, saved_decoding


class RunEvents(TrainerCallback):
    """Tells the trainer the step its run began at, and the training sampler which epoch begins. Under DDP
    accelerate wraps the sampler in a BatchSamplerShard, and the loader that skips a resumed epoch's trained batches
    (skip_first_batches) does not pass Trainer's set_epoch through that wrapper: the resumed epoch would replay
    epoch 0's order."""

    def __init__(self, trainer: "VanillaTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.first_step = state.global_step

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.trainer.epoch_sampler is not None:
            self.trainer.epoch_sampler.set_epoch(math.floor(state.epoch))  # a resumed run: the epoch it is in


class StreamPasses(TrainerCallback, ExportableState):
    """The optimizer steps of one pass over a training stream (an IterableDataset, whose length is unknown until a
    pass ends), kept in each checkpoint's trainer state: a run resumed in a later pass finds its place in that pass."""

    def __init__(self, steps: int | None = None):
        self.steps = steps

    def on_epoch_end(self, args, state, control, **kwargs):
        # A stream's epoch ends where the stream does, or where training stops inside it (max_steps, a time budget);
        # the first pass is epoch 0 (Trainer counts a stream's epoch fraction in max_steps, so it stays below 1).
        if self.steps is None and state.epoch < 1 and not control.should_training_stop:
            self.steps = state.global_step

    def state(self) -> dict:
        return {"args": {"steps": self.steps}, "attributes": {}}


def resumed_stream_warning(checkpoint: Path) -> str | None:
    """A warning when a --streaming run resumes after a whole pass over its stream from a checkpoint that does not
    record a pass' steps (StreamPasses; saved before it was kept): Trainer skips the trained batches from the
    stream's start, which ends the first pass, and the run trains the next pass from its start, not from where the
    checkpoint stopped inside it."""
    state = trainer_state(checkpoint) or {}
    passes = int(state.get("epoch") or 0)  # a stream's epoch: its passes, then a fraction
    recorded = (state.get("stateful_callbacks") or {}).get(StreamPasses.__name__, {}).get("args", {}).get("steps")
    if passes < 1 or recorded is not None:
        return None
    return (
        f"warning: {checkpoint} stopped after {passes} whole pass(es) over the --streaming data; the resumed run "
        "trains the next pass from its start, not from where the checkpoint stopped inside it, so the rest of the run "
        "sees its pairs in another order than an uninterrupted run"
    )


class VanillaTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer whose length-grouped sampler sees the length column (see `tokenize`), and whose checkpoints
    keep the training loss summed over the whole run, so that a resumed run reports the whole run's mean, and the
    data the run trains on (`checkpoint_files`), which a resumed run keeps to."""

    def __init__(
        self, *args, loss_before: float | None = 0.0, checkpoint_files: dict[str, str] | None = None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.loss_before = loss_before or 0.0  # summed over the steps of the checkpoint this run resumed from
        self.whole_run_known = loss_before is not None  # None: a checkpoint saved without that sum
        self.checkpoint_files = checkpoint_files or {}  # name -> text, written into each checkpoint (data_args.json)
        self.loss_since = None  # summed over this run's steps, on the device (one sync per checkpoint)
        self.tokens = TokenCounter()
        self.epoch_sampler = None  # the sampler drawing each epoch's order from the seed and the epoch
        self.non_embedding_parameters = None  # for floating_point_ops, counted once
        self.failed_pushes = []  # the checkpoints whose push to the Hub failed, in order
        self.first_step = 0  # the step this run began at (a resumed run: its checkpoint's)
        self.sentence_losses = None  # while evaluating: each batch's loss summed per sentence (see evaluation_loop)
        self.add_callback(RunEvents(self))
        self.stream_passes = None if has_length(self.train_dataset) else StreamPasses()
        if self.stream_passes is not None:
            self.add_callback(self.stream_passes)
        if self.neftune_noise_alpha is not None:  # Trainer would hook get_input_embeddings(), the encoder's alone
            self.add_neftune_noise(self.neftune_noise_alpha)
            self.neftune_noise_alpha = None

    def add_neftune_noise(self, alpha: float) -> None:
        """--neftune_noise_alpha: NEFTune's noise on the token embeddings the encoder and the decoder read, while
        training (transformers' hook, on the modules that the stacks call)."""
        model = self.accelerator.unwrap_model(self.model)
        encoder, decoder = model.get_encoder().embed_tokens, model.get_decoder().embed_tokens
        for embedding in [encoder] if decoder is encoder else [encoder, decoder]:  # one module after a resize
            embedding.neftune_noise_alpha = alpha
            embedding.register_forward_hook(neftune_post_forward_hook)

    def _get_train_sampler(self, train_dataset=None):
        # Trainer drops columns the model does not take before it builds the sampler, the length column with them.
        dataset, seed = self.train_dataset, self.args.seed if self.args.data_seed is None else self.args.data_seed
        max_tokens = getattr(self.args, "max_tokens", None)
        if max_tokens is not None:
            self.epoch_sampler = TokenBudgetBatchSampler(
                sequence_lengths(dataset, "input_ids"),
                sequence_lengths(dataset, "labels"),
                max_tokens,
                seed=seed,
                num_replicas=self.args.world_size,
                rank=self.args.process_index,
                pad_to_multiple_of=getattr(self.data_collator, "pad_to_multiple_of", None),
            )
        elif self.args.train_sampling_strategy == "group_by_length" and has_length(dataset):
            column = self.args.length_column_name
            lengths = dataset[column] if column in dataset.column_names else sequence_lengths(dataset, "input_ids")
            batch_size = self.args.train_batch_size * self.args.gradient_accumulation_steps  # as Trainer's
            self.epoch_sampler = EpochSeededLengthGroupedSampler(batch_size, lengths, seed)
        else:
            return super()._get_train_sampler(dataset)
        return self.epoch_sampler

    def _init_training_state(self, *args, **kwargs) -> tuple[int, int]:
        # A stream's length is unknown, so Trainer counts a run on it as one epoch and skips a resumed run's trained
        # batches from the stream's start: past the first pass that ends the pass and starts the next one from its
        # start. Where the checkpoint knows a pass' steps, the run resumes in its pass, at its batch.
        epochs_trained, batches_trained = super()._init_training_state(*args, **kwargs)
        if self.stream_passes is None:
            return epochs_trained, batches_trained
        # The resumed checkpoint's record; one saved without it gets ours (Trainer's save expects the key).
        saved = self.state.stateful_callbacks.setdefault(type(self.stream_passes).__name__, self.stream_passes.state())
        self.stream_passes.steps = saved["args"]["steps"]
        step = self.state.global_step
        if self.stream_passes.steps is None or step >= self.state.max_steps or self.args.ignore_data_skip:
            return epochs_trained, batches_trained
        passes, steps = divmod(step, self.stream_passes.steps)
        return passes, steps * self.args.gradient_accumulation_steps

    def training_step(self, model, inputs, *args, **kwargs) -> torch.Tensor:
        # This process's loss, divided so that the gradient accumulation steps of one optimizer step sum to its loss.
        loss = super().training_step(model, inputs, *args, **kwargs)
        self.loss_since = loss.detach() if self.loss_since is None else self.loss_since + loss.detach()
        self.tokens.count(inputs)
        return loss

    def _maybe_log_save_evaluate(self, *args, **kwargs) -> None:
        # The evaluation and checkpoint save that follow a step are not training: the next log's tokens per second
        # leaves their time out (a log made here marks its own time; what follows it is the pause).
        began = time.time()
        super()._maybe_log_save_evaluate(*args, **kwargs)
        self.tokens.paused += time.time() - max(began, self.tokens.last[2] or began)

    def _determine_best_metric(self, metrics: dict[str, float], trial) -> bool:
        # Under --save_strategy best Trainer saves after an evaluation only where it finds a new best, and drops a
        # save asked for at that step (--save_at_seconds' model, vanilla_time_budget): that one is saved too.
        return super()._determine_best_metric(metrics, trial) or self.control.should_save

    def floating_point_ops(self, inputs: dict) -> int:
        # Trainer's estimate, 6 x input tokens x non-embedding parameters, with the parameters counted once: Trainer
        # counts them every step, walking every module (0.3 ms a step at the small preset, 0.9 ms at base, on one
        # CPU core), host time that a GPU driven by this loop waits for.
        if self.model.main_input_name not in inputs:  # as Trainer: no estimate without the token ids
            return 0
        if self.non_embedding_parameters is None:
            self.non_embedding_parameters = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[self.model.main_input_name].numel() * self.non_embedding_parameters

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # A training step uses the model's loss alone: the output layer projects only the positions that have a
        # label. Not under torch.compile, where the mask's data-dependent shape would split the graph, nor where
        # Trainer computes the loss from the logits itself (label_smoothing_factor, compute_loss_func).
        if not return_outputs and "labels" in inputs and self.own_loss() and not self.args.torch_compile:
            inputs = {**inputs, "logits_to_keep": inputs["labels"] != -100}
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.sentence_losses is not None and return_outputs:  # an evaluation step: see evaluation_loop
            self.record_sentence_losses(result[1].logits, inputs["labels"])
        return result

    def own_loss(self) -> bool:
        """Whether the loss Trainer computes is the model's own: no label_smoothing_factor, no compute_loss_func."""
        return self.label_smoother is None and self.compute_loss_func is None

    def record_sentence_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Keeps an evaluation batch's loss summed per sentence, all processes' sentences, the ones DDP repeats to
        fill the last batch dropped (`gather_for_metrics`)."""
        sums = summed_nll_per_sentence(logits, labels, self.model.config.label_smoothing)
        self.sentence_losses.append(self.accelerator.gather_for_metrics(sums))

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        # With predict_with_generate, Seq2SeqTrainer writes every generation default (min_length 0, top_k 50, ...)
        # into the model's generation config, where the next save would keep them all as the model's own settings
        # (and generate() would warn that min_length and max_length were set beside min/max_new_tokens). The step
        # generates with a copy; the model's own settings stay as they were. Its output limit is sec. 6.1's, as
        # eval.py's, unless --generation_max_length sets one.
        generating = self.args.predict_with_generate and not prediction_loss_only
        own = self.model.generation_config
        self.model.generation_config = copy.deepcopy(own)
        if generating and self.args.generation_max_length is None:
            self.model.generation_config.max_length = paper_max_length(self.model, inputs["attention_mask"])
        try:
            step = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys, **gen_kwargs)
        finally:
            self.model.generation_config = own
        if generating and self.sentence_losses is not None and "labels" in inputs:
            # The generating step takes its loss from a forward pass whose logits it drops: one more, for the sums.
            with torch.no_grad(), self.compute_loss_context_manager():
                self.compute_loss(model, self._prepare_inputs(inputs), return_outputs=True)
        return step

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        # Iterating a DataLoader draws its seed from torch's CPU random stream: without the fork, every evaluation
        # during training would shift the dropout of the steps after it, and the trained model would move with
        # --eval_steps.
        with torch.random.fork_rng(devices=[]):
            return super().evaluate(*args, **kwargs)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        # Seq2SeqTrainer gathers with plain `gather` for the sake of num_return_sequences > 1 (transformers #25231),
        # which also keeps the sentences DDP's sampler repeats to give every process as many batches. One output a
        # sentence: `gather_for_metrics`, Trainer's own, drops them, so every sentence is scored once.
        returned = (
            getattr(self, "_gen_kwargs", {}).get("num_return_sequences")
            or self.model.generation_config.num_return_sequences
        )
        if (returned or 1) == 1:
            self.gather_function = partial(
                self.accelerator.gather_for_metrics, use_gather_object=self.args.eval_use_gather_object
            )
        # Trainer's loss gives each sentence its batch's per-token mean: a figure that moves with the batch size and
        # the process count, and with it the best checkpoint. The model's own loss is summed per sentence instead,
        # every sentence once, and divided by the split's target tokens.
        self.sentence_losses = [] if self.own_loss() else None
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        finally:
            sums, self.sentence_losses = self.sentence_losses, None
        name = f"{metric_key_prefix}_loss"
        if sums and name in output.metrics:
            total, tokens = torch.cat(sums).sum(dim=0, dtype=torch.float64)
            output.metrics[name] = (total / tokens).item()
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "train_runtime" in logs:  # the run's summary: its rates over Trainer's runtime
            logs.update(self.tokens.rates(self.accelerator, start_time, runtime=logs["train_runtime"]))
            if "train_loss" in logs:  # Trainer's is this process's loss since its last log: the run's, as reported
                del logs["train_loss"]
                logs.update(train_loss_metrics(self, self.first_step))
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
            for name, text in self.checkpoint_files.items():
                (Path(output_dir) / name).write_text(text, encoding="utf-8")
            fault_point(Path(output_dir).name)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Trainer's save of the model, tokenizer and training_args.bin, less three things they would carry: the
        truncation a fast tokenizer keeps from its last call (in tokenizer.json, where the `tokenizers` library and
        the engines reading the file apply it), --hub_token (pickled into training_args.bin, which is pushed), and
        the training's `use_cache: false` (Trainer sets it from --use_cache): the saved model decodes with its cache,
        in generate() and in a loop of the user's own."""
        backend = getattr(self.processing_class, "backend_tokenizer", None)
        if backend is not None:
            backend.no_truncation()
            backend.no_padding()
        config = self.accelerator.unwrap_model(self.model).config
        training_use_cache, config.use_cache = config.use_cache, True
        try:
            super()._save(output_dir, state_dict)
        finally:
            config.use_cache = training_use_cache
        if self.args.hub_token is not None:
            arguments = copy.copy(self.args)
            arguments.hub_token = None
            torch.save(arguments, Path(output_dir or self.args.output_dir) / "training_args.bin")

    def _issue_warnings_after_load(self, load_result) -> None:
        """Trainer's warning of keys missing from a checkpoint it loads (resuming, or the best model at the end), less
        the tied aliases: the embeddings and the output layer are one tensor, saved once under `shared`."""
        parameters = dict(self.model.named_parameters(remove_duplicate=False))
        loaded = {id(parameters[name]) for name in parameters if name not in load_result.missing_keys}
        missing = [
            name for name in load_result.missing_keys if name not in parameters or id(parameters[name]) not in loaded
        ]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def init_hf_repo(self, *args, **kwargs) -> None:
        """Trainer's creation of the --push_to_hub repository (before any training), a Hub that cannot be reached or
        that refuses it being one usage error."""
        try:
            super().init_hf_repo(*args, **kwargs)
        except HUB_ERRORS as error:
            repo = self.args.hub_model_id or Path(self.args.output_dir).absolute().name
            raise UsageError(f"--push_to_hub: cannot create the Hub repository {repo!r}: {first_line(error)}") from None

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
            # The whole checkpoint, but its data record (local absolute paths): a resume from it takes the data given.
            jobs.append(
                self.upload(
                    checkpoint_folder, f"{message}, checkpoint", [DATA_RECORD], path_in_repo=folder, run_as_future=True
                )
            )
        for job in jobs:  # Trainer waits on its pushes and never reads them: a refused one would go unnoticed
            job.add_done_callback(partial(self.report_push, Path(checkpoint_folder).name))
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress(jobs)
        else:
            self.push_in_progress.jobs.extend(jobs)

    def report_push(self, checkpoint: str, job: Future) -> None:
        """Says at once that a checkpoint's background push failed (training goes on), and remembers it for the end."""
        error = None if job.cancelled() else job.exception()
        if error is None:
            return
        if checkpoint not in self.failed_pushes:
            self.failed_pushes.append(checkpoint)
        print(
            f"warning: pushing {checkpoint} to {self.hub_model_id} failed: {first_line(error)}; the Hub does not have "
            "it, training goes on",
            file=sys.stderr,
        )

    def push_to_hub(self, commit_message: str = "End of training", blocking: bool = True, **kwargs):
        """Uploads output_dir as train.py's final save left it (the model, its card): Trainer's would save the model
        into output_dir again, outside the atomic save, and write its generic card over the project's."""
        if not self.is_world_process_zero():
            return None
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        if self.hub_model_id is None:
            self.init_hf_repo()
        self._finish_current_push()
        try:
            return self.upload(self.args.output_dir, commit_message, NOT_PUSHED, run_as_future=not blocking)
        except HUB_ERRORS as error:
            raise UsageError(
                f"the model is saved in {self.args.output_dir}, but pushing it to {self.hub_model_id} failed: "
                f"{first_line(error)}"
            ) from None

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


def diverged_warning(model: torch.nn.Module) -> str | None:
    """A warning line if the trained weights hold NaN or inf: Trainer trains on after a step that diverged (its loss
    log then shows 0, `logging_nan_inf_filter`) and saves a model that translates every sentence into nonsense."""
    broken = non_finite_weights(model, "the saved model")
    if broken is None:
        return None
    return (
        f"warning: training diverged: {broken}, so its translations are nonsense; train again with a lower "
        "--learning_rate, more --warmup_steps or gradient clipping (--max_grad_norm)"
    )


def loss_before(checkpoint: str | None) -> float | None:
    """The training loss summed over the steps up to a checkpoint; None for a checkpoint saved without that sum."""
    if checkpoint is None:
        return 0.0
    try:
        return float(json.loads((Path(checkpoint) / LOSS_TOTAL).read_text(encoding="utf-8"))["loss_sum"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def train_loss_metrics(trainer: VanillaTrainer, resumed_step: int) -> dict:
    """The mean training loss of the whole run, all processes'; where the checkpoint resumed lacks the sum, of the
    resumed steps, named so. A collective."""
    steps = trainer.state.global_step
    if trainer.whole_run_known:
        return {"train_loss": trainer.loss_total() / max(steps, 1)}
    if steps == resumed_step:  # a complete run's checkpoint saved without the sum: no figure to report
        return {}
    resumed_mean = (trainer.loss_total() - trainer.loss_before) / max(steps - resumed_step, 1)
    return {f"train_loss_steps_{resumed_step + 1}_to_{steps}": resumed_mean}


def summed_nll_per_sentence(
    logits: torch.Tensor | tuple, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Each evaluated sentence as (sum of its target tokens' plain cross-entropy, their count): (batch, 2); with
    `label_smoothing`, the sum of the model's label-smoothed loss (sec. 5.4) instead.

    Trainer's `preprocess_logits_for_metrics`: evaluation gathers two numbers per sentence instead of the logits."""
    logits = logits[0] if isinstance(logits, tuple) else logits  # (batch, tgt_len, vocab), then encoder outputs
    nll = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=-100, label_smoothing=label_smoothing, reduction="none"
    )
    return torch.stack((nll.sum(dim=-1), labels.ne(-100).sum(dim=-1).float()), dim=-1)


def nll_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """`eval_nll_loss`, the mean negative log-likelihood per target token without label smoothing (the figure other
    models report beside eval_loss, which is smoothed, sec. 5.4), and `eval_perplexity`, its exponential."""
    total, tokens = prediction.predictions.sum(axis=0)
    nll = float(total / tokens)
    return {"nll_loss": nll, "perplexity": math.exp(nll)}


def padding_fraction(trainer: Seq2SeqTrainer, dataloader: DataLoader) -> float:
    """The share of pad tokens (source and target) in one epoch of the training batches of all processes (each
    process's `dataloader`, Trainer's; drawing the epoch's order draws from torch's random stream). A collective."""
    batches = list(dataloader.batch_sampler)
    rows = np.concatenate(batches)  # the epoch's rows, batch after batch
    sizes = np.array([len(batch) for batch in batches])
    starts = np.cumsum(sizes) - sizes  # where each batch begins in rows
    multiple = getattr(trainer.data_collator, "pad_to_multiple_of", None)
    real = padded = 0
    for side in ("input_ids", "labels"):
        lengths = sequence_lengths(trainer.train_dataset, side)[rows]
        real += int(lengths.sum())
        padded += int((sizes * padded_length(np.maximum.reduceat(lengths, starts), multiple)).sum())
    counts = torch.tensor([real, padded], dtype=torch.int64, device=trainer.args.device)
    real, padded = trainer.accelerator.reduce(counts, reduction="sum").tolist()  # under DDP, every process's batches
    return 1.0 - real / padded


def decoded(tokenizer, ids: np.ndarray) -> list[str]:
    """Generated or label ids (padded with -100 or the pad id) as text, special tokens left out."""
    texts = tokenizer.batch_decode(np.where(ids < 0, tokenizer.pad_token_id, ids), skip_special_tokens=True)
    return [text.strip() for text in texts]


def paper_max_length(model, attention_mask: torch.Tensor) -> int:
    """Sec. 6.1's output limit for a batch, as eval.py sets it: its longest input + 50 tokens (within a learned
    position table), after the decoder start token."""
    longest = int(attention_mask.sum(dim=1).max())
    return output_limit(longest, MAX_LENGTH_OFFSET, position_limit(model)) + 1


def translation_metrics(tokenizer, metrics: dict) -> Callable[[EvalPrediction], dict[str, float]]:
    """Trainer's compute_metrics under --predict_with_generate: `bleu` and `chrf` of the generated translations
    against the targets decoded from the labels (sacreBLEU, as eval.py scores; eval.py reads the untokenized
    references, so its figures can differ slightly), and `gen_len`, the mean generated length in tokens (the end
    token included once, the decoder start not), as transformers' run_translation.py reports."""

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        generated = prediction.predictions
        scores = score(metrics, decoded(tokenizer, generated), decoded(tokenizer, prediction.label_ids))
        tokens = generated[:, 1:]
        ends = tokens == tokenizer.eos_token_id
        before_end = np.cumsum(ends, axis=1) - ends == 0  # beam search fills finished rows with </s>
        lengths = np.count_nonzero(before_end & (tokens >= 0) & (tokens != tokenizer.pad_token_id), axis=1)
        return {"bleu": scores["sacrebleu"]["score"], "chrf": scores["chrf"]["score"], "gen_len": float(lengths.mean())}

    return compute


def predict_metrics(trainer: Seq2SeqTrainer, dataset, metrics: dict) -> dict[str, float]:
    """--do_predict: the test split translated by beam search, scored as --predict_with_generate scores (test_bleu,
    test_chrf, test_gen_len), the share of sentences whose translation equals the reference exactly
    (test_exact_match), the model's loss per target token (test_loss, as eval_loss), and the number of pairs
    (test_samples, --max_predict_samples may cut the split). The trainer's settings are put back after: the final save
    records the run's."""
    settings = trainer.args.predict_with_generate, trainer.compute_metrics, trainer.preprocess_logits_for_metrics
    trainer.args.predict_with_generate = True
    trainer.compute_metrics = translation_metrics(trainer.processing_class, metrics)
    trainer.preprocess_logits_for_metrics = None  # it reads logits, not translations
    try:
        output = trainer.predict(dataset, metric_key_prefix="test")  # rows in the sampler's order, labels alongside
    finally:
        trainer.args.predict_with_generate, trainer.compute_metrics, trainer.preprocess_logits_for_metrics = settings
    hypotheses, references = (decoded(trainer.processing_class, ids) for ids in (output.predictions, output.label_ids))
    matched = sum(h == r for h, r in zip(hypotheses, references, strict=True)) / len(references)
    names = ("test_loss", "test_bleu", "test_chrf", "test_gen_len")
    scores = {name: output.metrics[name] for name in names if name in output.metrics}
    return {**scores, "test_exact_match": matched, "test_samples": len(dataset)}


def decoding_metrics(trainer: Seq2SeqTrainer, prefix: str) -> dict[str, float]:
    """The beam size and length penalty that generated the `prefix` scores (eval_bleu, test_bleu):
    --generation_num_beams as Seq2SeqTrainer takes it, else the model's generation_config; the card shows them."""
    saved = saved_decoding(trainer.model.generation_config.to_dict())
    num_beams = trainer.args.generation_num_beams or saved["num_beams"]
    return {f"{prefix}_num_beams": num_beams, f"{prefix}_length_penalty": saved["length_penalty"]}
