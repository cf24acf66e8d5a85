"""train.py and the modules it imports: the CLI end to end, the BPE, the schedule, two processes, resume, bad input."""

import bz2
import codecs
import csv
import gzip
import hashlib
import json
import lzma
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
import safetensors.torch
import torch
from datasets import Dataset
from harness import ROOT, environment, run_cli
from num2words import num2words
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    EvalPrediction,
    GenerationConfig,
    HfArgumentParser,
    Seq2SeqTrainingArguments,
    get_scheduler,
)
from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

import configuration_vanilla
import train
import vanilla_files
from configuration_vanilla import PRESETS
from modeling_vanilla import VanillaConfig, VanillaForConditionalGeneration
from vanilla_cli import UsageError
from vanilla_corpus import (
    DataArguments,
    TrainDataArguments,
    embedded_number_task,
    first_samples,
    load_raw_datasets,
    pair_problem,
    stream_raw_datasets,
)
from vanilla_data_record import data_record
from vanilla_files import LOSS_TOTAL, complete_checkpoints
from vanilla_metrics import load_metrics
from vanilla_tokenizer import SPECIAL_TOKENS, corpus_texts, tokenize, train_bpe_tokenizer
from vanilla_train_arguments import (
    GENERATION_METRICS,
    ModelArguments,
    argument_parser,
    build_config,
    model_arguments,
    paper_peak_learning_rate,
    parse_arguments,
)
from vanilla_trainer import VanillaTrainer, nll_metrics, summed_nll_per_sentence, translation_metrics
from vanilla_translation import MAX_LENGTH_OFFSET

# An experiment tracker Trainer reports to whose library this machine lacks.
UNINSTALLED_REPORTER = next(
    name for name in INTEGRATION_TO_CALLBACK if name not in get_available_reporting_integrations()
)
# A model that trains a few steps in a second or two.
TINY = ["--preset", "tiny", "--d_model", "16", "--num_heads", "2", "--d_ff", "32", "--encoder_layers", "1"]
QUICK = ["--per_device_train_batch_size", "4", "--warmup_steps", "2", "--save_strategy", "no", "--disable_tqdm", "true"]


def run_train(
    *args: str, launcher: tuple[str, ...] = (sys.executable,), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return run_cli("train.py", *args, launcher=launcher, env=env)


def write_jsonl(path: Path, numbers: range, source: str = "en", target: str = "de") -> Path:
    lines = [
        json.dumps({"translation": {source: num2words(n, lang=source), target: num2words(n, lang=target)}})
        for n in numbers
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def assert_loads_and_translates(folder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__name__ == "VanillaForConditionalGeneration"
    inputs = tokenizer(["twenty-three"], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=5)
    assert output.shape[0] == 1 and output[0, 0].item() == model.config.decoder_start_token_id


@pytest.mark.slow
def test_the_padding_line_names_a_recipes_max_tokens_as_a_setting_not_a_flag_typed(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"max_tokens: 200\noutput_dir: {tmp_path / 'out'}\n")
    result = run_train(str(recipe), *TINY, "--max_steps", "1", "--warmup_steps", "2", "--save_strategy", "no")
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("padding: "))
    assert line.endswith(" of the tokens in an epoch's batches (max_tokens=200)"), line


@pytest.mark.slow
def test_cli_trains_on_the_embedded_task_from_a_yaml_file_and_saves_a_loadable_model(tmp_path):
    output_dir = tmp_path / "my model"  # the command printed to evaluate it quotes the space
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"output_dir: {output_dir}\npreset: tiny\nd_model: 32\nnum_heads: 2\nmax_steps: 3\nlogging_steps: 1\n"
        "per_device_train_batch_size: 8\nwarmup_steps: 2\nsave_strategy: 'no'\ndisable_tqdm: true\n"
        "max_source_length: 12\n"
    )
    result = run_train(str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]

    for name in ["model.safetensors", "configuration_vanilla.py", "modeling_vanilla.py", "tokenizer.json"]:
        assert (output_dir / name).is_file(), name
    config = json.loads((output_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_vanilla.VanillaForConditionalGeneration"
    # Explicit flags win over the preset; the preset fills in the rest.
    assert (config["d_model"], config["num_heads"]) == (32, 2)
    assert (config["d_ff"], config["encoder_layers"]) == (PRESETS["tiny"]["d_ff"], 2)
    generation = json.loads((output_dir / "generation_config.json").read_text())
    assert (generation["num_beams"], generation["length_penalty"]) == (4, 0.6)
    assert "python eval.py translate --model" in (output_dir / "README.md").read_text()  # the embedded task
    assert not (output_dir / ".saving").exists()
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["eval_perplexity"] == pytest.approx(math.exp(results["eval_nll_loss"]), rel=1e-4)
    assert f"model saved to {output_dir}" in result.stdout
    command = next(line for line in result.stdout.splitlines() if line.startswith("evaluate it with: "))
    expected = ["python", str(ROOT / "eval.py"), "--model", str(output_dir)]  # the eval.py beside the train.py run
    assert shlex.split(command.removeprefix("evaluate it with: ")) == expected
    assert "padding:" in result.stdout
    assert_loads_and_translates(output_dir)
    # The saved tokenizer truncates to the length the model was trained on, as a Hub tokenizer does to its model's.
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert tokenizer.model_max_length == 12
    assert len(tokenizer(" ".join(["twenty-three"] * 20), truncation=True).input_ids) == 12


@pytest.mark.slow
def test_a_recipes_tilde_paths_are_the_home_folder_from_any_working_folder(tmp_path):
    """A recipe has no shell to expand `~`: its data paths name the home folder's files, as its output_dir does (and
    neither a `~` folder in the working folder), and data_args.json records them expanded."""
    home, work = tmp_path / "home", tmp_path / "work"
    (home / "data").mkdir(parents=True)
    work.mkdir()
    write_jsonl(home / "data" / "train.jsonl", range(1, 17))
    write_jsonl(home / "data" / "test.jsonl", range(20, 24))
    recipe = home / "recipe.yaml"
    recipe.write_text(
        "output_dir: ~/runs/tilde\ntrain_file: ~/data/train.jsonl\ntest_file: ~/data/test.jsonl\n"
        "source_lang: en\ntarget_lang: de\n"
    )
    result = run_cli(
        "train.py", str(recipe), *TINY, *QUICK, "--max_steps", "1", env=environment(HOME=str(home)), cwd=work
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((home / "runs" / "tilde" / "data_args.json").read_text())
    assert (record["train_file"], record["test_file"]) == (
        str(home / "data/train.jsonl"),
        str(home / "data/test.jsonl"),
    )
    assert list(work.iterdir()) == []


def test_a_recipes_tilde_checkpoint_to_resume_from_is_in_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("output_dir: ~/runs/x\nresume_from_checkpoint: ~/runs/x/checkpoint-2\n")
    _, _, args = parse_arguments([str(recipe)])
    assert (args.output_dir, args.resume_from_checkpoint) == (
        str(tmp_path / "runs/x"),
        str(tmp_path / "runs/x/checkpoint-2"),
    )


@pytest.mark.slow
def test_train_and_eval_leave_cudnn_attention_out_unless_pytorchs_variable_asks_for_it(tmp_path):
    """cuDNN builds a plan for each new shape of the attention's inputs (PyTorch's first choice on Hopper GPUs), and
    both CLIs batch sentences of many lengths: they turn it off for their process, unless TORCH_CUDNN_SDPA_PREFERRED=1.
    A CPU has no cuDNN, so the process's setting is what is checked, read when it exits."""
    (tmp_path / "shim").mkdir()
    (tmp_path / "shim" / "sitecustomize.py").write_text(
        "import atexit, os, torch\n"
        "atexit.register(lambda: open(os.environ['CUDNN_SDP_STATE'], 'w').write(\n"
        "    str(torch.backends.cuda.cudnn_sdp_enabled())))\n"
    )
    state = tmp_path / "state"

    def run(script: str, *args: str, **extra: str) -> str:
        env = environment(PYTHONPATH=f"{tmp_path / 'shim'}{os.pathsep}{ROOT}", CUDNN_SDP_STATE=str(state), **extra)
        result = run_cli(script, *args, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        return state.read_text()

    model = tmp_path / "model"
    assert run("train.py", *TINY, *QUICK, "--max_steps", "1", "--output_dir", str(model)) == "False"
    evaluation = ("--model", str(model), "--max_length_offset", "2", "--results_file", str(tmp_path / "report.json"))
    assert run("eval.py", *evaluation) == "False"
    assert run("eval.py", *evaluation, TORCH_CUDNN_SDPA_PREFERRED="1") == "True"


@pytest.mark.parametrize(
    "program, launcher",
    [
        ("train.py", ["python", "eval.py"]),
        ("../vanilla/train.py", ["python", "../vanilla/eval.py"]),
        ("/opt/venv/bin/vanilla-train", ["vanilla-eval"]),
    ],
)
def test_the_printed_eval_command_runs_eval_py_as_train_py_was_run(monkeypatch, program, launcher):
    """`python eval.py` works only beside eval.py: the command train.py prints names the eval.py beside the train.py
    that ran, or the installed vanilla-eval after vanilla-train."""
    monkeypatch.setattr(sys, "argv", [program, "--output_dir", "run"])
    line = train.end_of_run_command("my run", {"test": None})
    assert shlex.split(line.removeprefix("evaluate it with: ")) == [*launcher, "--model", "my run"]


def test_the_printed_eval_command_passes_a_folder_named_like_a_flag_as_the_value(monkeypatch):
    """--output_dir=-run saves into the folder -run: the command printed to score it names it so that eval.py's
    parser reads it as --model's value, not as a flag of its own."""
    from eval import argument_parser

    monkeypatch.setattr(sys, "argv", ["train.py", "--output_dir=-run"])
    line = train.end_of_run_command("-run", {"test": None})
    words = shlex.split(line.removeprefix("evaluate it with: "))
    args, _, _ = argument_parser().parse_args_into_dataclasses(args=words[2:])
    assert args.model == "-run"
    with pytest.raises(
        UsageError, match=r"--model: expected one argument \(a value that starts with - is written --model=-value\)"
    ):
        argument_parser().parse_args_into_dataclasses(args=["--model", "-run"])


def test_bpe_tokenizer_round_trips_text_and_uses_the_config_special_ids():
    texts = [num2words(n, lang=lang) for n in range(1, 300) for lang in ("en", "de")]
    texts += ["Ein Mann in einem blauen Hemd steht auf einer Leiter.", "Zwei Männer stehen am Herd!"]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=150)
    special = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id]
    assert special == [0, 1, 2, 3]
    config = VanillaConfig()
    ids = (config.pad_token_id, config.bos_token_id, config.eos_token_id, config.decoder_start_token_id)
    assert ids == (0, 1, 2, 1)
    assert tokenizer.convert_ids_to_tokens(special) == list(configuration_vanilla.SPECIAL_TOKENS)
    assert SPECIAL_TOKENS is configuration_vanilla.SPECIAL_TOKENS  # one definition, imported
    for text in ["three hundred and forty-seven", "dreihundertsiebenundvierzig", "Ein Mann steht am Herd. Männer!"]:
        ids = tokenizer(text)["input_ids"]
        assert ids[-1] == 2 and 3 not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert len(tokenizer) == 150


def test_bpe_tokenizer_reads_special_token_names_in_a_sentence_as_text(tmp_path):
    text = "x <pad> y <unk> z <s> w </s> v"
    train_bpe_tokenizer([text, "a b c"] * 20, vocab_size=60).save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)  # as eval.py loads a trained model's
    for encoded in (tokenizer(text), tokenizer(text_target=text)):
        ids = encoded["input_ids"]
        assert ids[-1] == configuration_vanilla.EOS_TOKEN_ID
        assert not set(ids[:-1]) & set(range(len(SPECIAL_TOKENS))), tokenizer.convert_ids_to_tokens(ids)
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_bpe_tokenizer_decodes_a_dropped_unknown_character_as_one_word_boundary(tmp_path):
    """A character the BPE never saw is "▁" + <unk>: skipping the <unk> must not leave a doubled, leading or trailing
    space (the normalizer makes every encoded text one space between words, none at the ends)."""
    train_bpe_tokenizer(["A man on the street.", "Ein Mann auf der Straße."] * 50, vocab_size=80).save_pretrained(
        tmp_path
    )
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    for text, expected in [
        ("A man \u4e00 on the street.", "A man on the street."),
        ("\u4e00 A man", "A man"),
        ("A man \u4e00", "A man"),
        ("A \u4e00 \u4e01 man", "A man"),
        ("\u4e00", ""),
        ("A man on the street.", "A man on the street."),
    ]:
        ids = tokenizer(text)["input_ids"]
        assert (configuration_vanilla.UNK_TOKEN_ID in ids) == ("\u4e00" in text)
        assert tokenizer.decode(ids, skip_special_tokens=True) == expected, tokenizer.convert_ids_to_tokens(ids)
    assert tokenizer.decode([]) == ""
    unknown = tokenizer("A man \u4e00 on")["input_ids"]
    assert tokenizer.decode(unknown, skip_special_tokens=False) == "A man <unk> on</s>"


@pytest.mark.slow
def test_a_vocab_size_the_text_cannot_fill_is_said_with_the_size_learned(tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", range(1, 9))
    args = [*TINY, *QUICK, "--train_file", str(train_file), "--source_lang", "en", "--target_lang", "de"]
    result = run_train(*args, "--vocab_size", "1000", "--max_steps", "1", "--output_dir", str(tmp_path / "big"))
    assert result.returncode == 0, result.stderr[-3000:]
    learned = json.loads((tmp_path / "big" / "config.json").read_text())["vocab_size"]
    texts = [num2words(n, lang=lang) for lang in ("en", "de") for n in range(1, 9)]
    assert learned < 1000 and len(train_bpe_tokenizer(texts, 5000)) == learned  # no size fills more: it is all
    assert f"note: --vocab_size 1000: the BPE learned on the training text stops at {learned} entries" in result.stderr
    filled = run_train(*args, "--vocab_size", str(learned), "--max_steps", "1", "--output_dir", str(tmp_path / "fit"))
    assert filled.returncode == 0 and "note: --vocab_size" not in filled.stderr


def test_bpe_tokenizer_splits_punctuation_from_words():
    texts = ['Ein Mann (im T-Shirt) sagt: "Hallo!"', "A man on the street.", "The street, at night."] * 50
    tokenizer = train_bpe_tokenizer(texts, vocab_size=120)
    pieces = set(tokenizer.get_vocab()) - set(tokenizer.all_special_tokens)
    glued = [piece for piece in pieces if len(piece) > 1 and any(not c.isalnum() for c in piece.strip("▁"))]
    assert glued == []
    for text in texts[:3]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    street = tokenizer.tokenize("street")
    assert tokenizer.tokenize("street.") == street + ["."]


def test_bpe_tokenizer_takes_stray_whitespace_as_one_word_boundary():
    """Leading, trailing, doubled spaces, tabs and no-break spaces: each was a "▁" token of its own."""
    tokenizer = train_bpe_tokenizer(["A man on the street.", "Ein Mann auf der Straße."] * 50, vocab_size=80)
    plain = tokenizer("A man on the street.")["input_ids"]
    for text in (" A man on the street. ", "A  man\ton the\u00a0street.\n"):
        assert tokenizer(text)["input_ids"] == plain, text


def test_a_model_trained_with_tokenizer_name_saves_it_truncating_at_the_trained_length(tmp_path):
    named = tmp_path / "tokenizer"
    train_bpe_tokenizer([num2words(n, lang=lang) for n in range(1, 100) for lang in ("en", "de")], 60).save_pretrained(
        named
    )
    assert AutoTokenizer.from_pretrained(named).model_max_length > 10**6  # no limit of its own
    output_dir = tmp_path / "model"
    flags = ["--tokenizer_name", str(named), "--max_source_length", "12", "--max_target_length", "12"]
    result = run_train(*TINY, *QUICK, *flags, "--max_steps", "1", "--output_dir", str(output_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    saved = AutoTokenizer.from_pretrained(output_dir)
    assert saved.get_vocab() == AutoTokenizer.from_pretrained(named).get_vocab()
    assert saved.model_max_length == 12
    assert len(saved(" ".join(["twenty-three"] * 20), truncation=True).input_ids) == 12


def test_recipe_file_with_flags_after_it_the_command_line_wins(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("preset: small\nnum_train_epochs: 8\nlearning_rate: 0.001\nsource_lang: de\n")
    model_args, data_args, args = parse_arguments([str(recipe), "--num_train_epochs", "2"])
    assert (model_args.preset, data_args.source_lang, args.learning_rate) == ("small", "de", 0.001)
    assert args.num_train_epochs == 2
    as_json = tmp_path / "recipe.json"
    as_json.write_text(json.dumps({"preset": "tiny", "num_train_epochs": 3}))
    model_args, _, args = parse_arguments([str(as_json)])
    assert (model_args.preset, args.num_train_epochs) == ("tiny", 3)
    recipe.write_text("preset: small\nnum_epochs: 8\n")
    with pytest.raises(UsageError, match="unknown keys num_epochs") as refused:
        parse_arguments([str(recipe)])
    assert "transformers 5" not in str(refused.value)
    recipe.write_text("evaluation_strategy: epoch\n")  # a recipe of transformers 4.x days: what replaces the key
    with pytest.raises(UsageError, match="transformers 5 has no --evaluation_strategy: use --eval_strategy$"):
        parse_arguments([str(recipe)])


@pytest.mark.parametrize(
    "line, expected",
    [
        ("max_steps: [1, 2]", "max_steps: [1, 2] is not a value of type int"),
        ("preset: [tiny]", 'preset: ["tiny"] is not a value of type str'),
        ("per_device_train_batch_size: 4.5", "per_device_train_batch_size: 4.5 is not a value of type int"),
        ("max_tokens: 100.7", "max_tokens: 100.7 is not a value of type int | None"),
        ("bf16: 1", "bf16: 1 is not a value of type bool"),
        ("save_strategy: no", "save_strategy: false is not a value of type SaveStrategy | str (YAML reads no, yes"),
        ("max_steps: abc", 'max_steps: "abc" is not a value of type int'),
        ("learning_rate: fast", 'learning_rate: "fast" is not a value of type float | None'),
        ("train_sampling_strategy: sorted", 'train_sampling_strategy: "sorted" is not one of random, group_by_length'),
        ("save_strategy: sometimes", 'save_strategy: "sometimes" is not one of no, steps, epoch, best'),
    ],
)
def test_a_recipe_value_of_another_type_than_its_flag_is_a_usage_error(tmp_path, line, expected):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(line + "\n")
    with pytest.raises(UsageError) as raised:
        parse_arguments([str(recipe), "--output_dir", str(tmp_path / "out")])
    assert str(raised.value).removeprefix(f"{recipe}: ").startswith(expected), str(raised.value)


def test_recipe_values_of_their_flags_types_parse_as_on_the_command_line(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    lines = ["learning_rate: 1e-4", "report_to: [none]", "save_strategy: 'no'", "max_tokens: null", "bf16: false"]
    recipe.write_text("\n".join([*lines, "warmup_steps: 10", "accelerator_config: {split_batches: true}"]) + "\n")
    _, _, args = parse_arguments([str(recipe), "--output_dir", str(tmp_path / "out")])
    assert (args.learning_rate, args.report_to, args.save_strategy, args.max_tokens) == (1e-4, [], "no", None)
    assert (args.warmup_steps, args.accelerator_config.split_batches) == (10, True)


def test_default_schedule_is_the_paper_learning_rate():
    model_args, _, args = parse_arguments(["--output_dir", "unused"])
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon) == (0.9, 0.98, 1e-9)
    d_model, warmup = PRESETS[model_args.preset]["d_model"], args.warmup_steps
    assert (d_model, warmup) == (512, 4000)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=paper_peak_learning_rate(d_model, warmup))
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=int(warmup))
    applied = {}  # update k (from 1) -> the rate its optimizer.step() used, as Trainer steps them
    for update in range(1, 12002):
        applied[update] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    assert applied[1] == 0.0  # transformers' warmups start from 0: the first update moves only Adam's moments
    for step in [1, 100, 3999, 4000, 4001, 8000, 12000]:
        paper = d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)  # sec. 5.3
        assert applied[step + 1] == pytest.approx(paper, rel=1e-9), step


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def torchrun() -> tuple[str, ...]:
    return (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port())


def accelerate_launch(*flags: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "accelerate.commands.launch", *flags, "--main_process_port", free_port())


def data_parallel_args(tmp_path: Path, batch_size: int, name: str) -> list[str]:
    """One epoch of 32 pairs, no dropout and a fixed order: one process at batch 2b sees what two see at batch b.
    Then 7 validation and 7 test pairs, scored 4 a batch: two processes' last batch repeats a sentence to even out."""
    train_file = write_jsonl(tmp_path / "train.jsonl", range(1, 33))
    args = [*TINY, *QUICK, "--train_file", str(train_file), "--source_lang", "en", "--target_lang", "de"]
    args += ["--validation_file", str(write_jsonl(tmp_path / "validation.jsonl", range(40, 47)))]
    args += ["--test_file", str(write_jsonl(tmp_path / "test.jsonl", range(50, 57))), "--do_predict"]
    args += ["--per_device_eval_batch_size", "4"]
    args += ["--dropout", "0", "--train_sampling_strategy", "random", "--num_train_epochs", "1"]
    args += ["--per_device_train_batch_size", str(batch_size), "--save_strategy", "epoch"]
    return args + ["--output_dir", str(tmp_path / name)]


def run_record(output_dir: Path) -> tuple[int, float, float]:
    """(steps, summed loss of the checkpoint, train_loss) of a finished one-epoch run."""
    checkpoint = complete_checkpoints(output_dir)[-1]
    loss_sum = json.loads((checkpoint / LOSS_TOTAL).read_text())["loss_sum"]
    steps = json.loads((output_dir / "trainer_state.json").read_text())["global_step"]
    return steps, loss_sum, json.loads((output_dir / "all_results.json").read_text())["train_loss"]


@pytest.mark.multiprocess
def test_torchrun_on_cpus_trains_data_parallel_like_one_process_at_twice_the_batch(tmp_path):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    result = run_train(
        *data_parallel_args(tmp_path, 4, "ddp"), launcher=torchrun(), env=environment(TMPDIR=str(temporary))
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no GPU: 2 processes train data-parallel (DDP) on the CPUs with the gloo backend" in result.stdout
    # One process tokenized the corpus and the other read its files, which are gone with the run.
    assert result.stderr.count("Tokenizing:   0%") == 3, result.stderr[-3000:]  # train, validation, test
    assert list(temporary.glob("vanilla-tokenized-*")) == []
    assert result.stdout.count("model saved to") == 1
    assert "find_unused_parameters" not in result.stderr  # every parameter is used: DDP need not look for others
    single = run_train(*data_parallel_args(tmp_path, 8, "single"))
    assert single.returncode == 0, single.stderr[-3000:]

    ddp_steps, ddp_sum, ddp_loss = run_record(tmp_path / "ddp")
    single_steps, single_sum, single_loss = run_record(tmp_path / "single")
    # 32 pairs at 4 a batch: 4 steps per process, half of one process's 8 at the same batch, when each takes half.
    assert ddp_steps == single_steps == 32 // (2 * 4)
    # Both processes' loss, normalized by the tokens of both, is one process's loss on their two batches together.
    assert ddp_sum == pytest.approx(single_sum, rel=1e-4) and ddp_loss == pytest.approx(single_loss, rel=1e-4)
    # Trainer's own summary (its log, trainer_state.json) names the same train_loss: all processes', not the first's.
    history = json.loads((tmp_path / "ddp" / "trainer_state.json").read_text())["log_history"]
    summary = next(entry for entry in reversed(history) if "train_runtime" in entry)
    assert summary["train_loss"] == pytest.approx(ddp_loss, rel=1e-6)
    assert [path.name for path in (tmp_path / "ddp").glob("checkpoint-*")] == ["checkpoint-4"]
    assert_loads_and_translates(tmp_path / "ddp")
    # The same model scores the same: each validation and test sentence counted once, not the repeated one again.
    ddp, single = (json.loads((tmp_path / name / "all_results.json").read_text()) for name in ("ddp", "single"))
    for name in ("eval_loss", "eval_nll_loss", "test_chrf", "test_gen_len"):
        assert ddp[name] == pytest.approx(single[name], rel=1e-4), name


@pytest.mark.multiprocess
def test_accelerate_launch_on_cpus_trains_data_parallel(tmp_path):
    launcher = accelerate_launch("--multi_gpu", "--num_processes", "2")
    result = run_train(*data_parallel_args(tmp_path, 4, "ddp"), launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no GPU: 2 processes train data-parallel (DDP)" in result.stdout
    assert result.stdout.count("model saved to") == 1
    steps, _, _ = run_record(tmp_path / "ddp")
    assert steps == 32 // (2 * 4)


@pytest.mark.multiprocess
def test_streaming_under_torchrun_trains_on_batches_of_different_lengths(tmp_path):
    """A folder of two files a split, of unequal size: accelerate hands each process its own training file, and the
    validation and test splits, read whole, are scored sentence by sentence, each once, on both processes alike."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, first, sizes in (("train", 1, (28, 4)), ("validation", 40, (5, 2)), ("test", 50, (5, 2))):
        for index, size in enumerate(sizes):  # "one" and "thirty-two" pad differently
            write_jsonl(corpus / f"{split}-{index}.jsonl", range(first, first + size))
            first += size
    args = [*TINY, *QUICK, "--dataset_name", str(corpus), "--source_lang", "en", "--target_lang", "de"]
    args += ["--output_dir", str(tmp_path / "streamed"), "--streaming", "--max_steps", "3", "--do_predict"]
    args += ["--per_device_eval_batch_size", "2"]
    result = run_train(*args, launcher=torchrun())
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("model saved to") == 1
    assert json.loads((tmp_path / "streamed" / "trainer_state.json").read_text())["global_step"] == 3
    assert "test split (7 sentences): " in result.stdout
    # The validation loss, each of the 7 pairs once, as the saved model gives it here in one batch.
    folder = tmp_path / "streamed"
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    pairs = [json.loads(line)["translation"] for file in sorted(corpus.glob("validation-*")) for line in file.open()]
    batch = tokenizer([p["en"] for p in pairs], text_target=[p["de"] for p in pairs], padding=True, return_tensors="pt")
    batch["labels"] = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
    with torch.no_grad():
        logits = model(**batch).logits
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"], ignore_index=-100)
    reported = json.loads((folder / "all_results.json").read_text())["eval_nll_loss"]
    assert reported == pytest.approx(nll.item(), rel=1e-4)


@pytest.mark.multiprocess
def test_streaming_max_train_samples_under_torchrun_trains_the_first_pairs_like_one_process(tmp_path):
    """Two training files, one per process: the cut keeps the stream's first 16 pairs (the first file's 12, the
    second's first 4), which two processes at batch 4 train as one process at batch 8 does."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_jsonl(corpus / "train-0.jsonl", range(1, 13))
    write_jsonl(corpus / "train-1.jsonl", range(13, 33))
    args = [*TINY, *QUICK, "--dataset_name", str(corpus), "--source_lang", "en", "--target_lang", "de"]
    args += ["--streaming", "--max_train_samples", "16"]
    args += ["--max_steps", "2", "--dropout", "0", "--logging_steps", "1"]  # the first update's rate is 0
    two = run_train(*args, "--output_dir", str(tmp_path / "two"), launcher=torchrun())
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_train(*args, "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    # Both steps score the initial weights: each step's loss is that of the pairs it trained on (logged to 4 digits).
    assert len(logged_losses(tmp_path / "one")) == 2
    assert logged_losses(tmp_path / "two") == pytest.approx(logged_losses(tmp_path / "one"), abs=2e-4)


def logged_losses(output_dir: Path) -> list[float]:
    """The training loss of each log in a run's trainer_state.json."""
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


@pytest.mark.parametrize(
    "launcher, expected",
    [
        (("--cpu", "--num_processes", "2"), "accelerate launch started one process"),
        (("--config_file", str(ROOT / "recipes" / "accelerate_fsdp.yaml")), "FSDP needs GPUs"),
    ],
)
@pytest.mark.multiprocess
def test_launch_that_cannot_be_data_parallel_on_cpus_is_one_error_line(tmp_path, launcher, expected):
    result = run_train(*data_parallel_args(tmp_path, 4, "out"), launcher=accelerate_launch("-q", *launcher))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-3000:]
    assert 'train.py", line' not in result.stderr  # no traceback of train.py's own
    assert not (tmp_path / "out").exists()


@pytest.mark.multiprocess
def test_a_torchrun_launch_that_cannot_be_data_parallel_names_only_the_flags_given(tmp_path):
    """On CPUs gloo is train.py's own default, no flag given: the refusal names --use_cpu false alone, to drop."""
    args = data_parallel_args(tmp_path, 4, "out")
    result = run_train(*args, "--use_cpu", "false", launcher=torchrun())
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode != 0 and len(errors) == 1, result.stderr[-3000:]
    assert errors[0].endswith("would not train them data-parallel (--use_cpu False); drop it"), errors[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.multiprocess
@pytest.mark.skipif(
    torch.cuda.device_count() < 2,
    reason="FSDP needs 2 GPUs: accelerate turns FSDP on only for GPU processes (on CPUs, --use_cpu makes them "
    "MULTI_CPU and accelerate drops the FSDP plugin), though torch's fully_shard itself runs on CPUs with gloo",
)
def test_fsdp_through_accelerate_saves_the_full_model_of_one_process_at_twice_the_batch(tmp_path):
    launcher = accelerate_launch("--config_file", str(ROOT / "recipes" / "accelerate_fsdp.yaml"))
    result = run_train(*data_parallel_args(tmp_path, 4, "fsdp"), launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("model saved to") == 1
    single = run_train(*data_parallel_args(tmp_path, 8, "single"))
    assert single.returncode == 0, single.stderr[-3000:]
    sharded, whole = (AutoModelForSeq2SeqLM.from_pretrained(tmp_path / name) for name in ("fsdp", "single"))
    sharded_weights, whole_weights = sharded.state_dict(), whole.state_dict()
    assert sharded_weights.keys() == whole_weights.keys()
    for name, weight in whole_weights.items():  # full tensors, not one process's shard, trained alike
        torch.testing.assert_close(sharded_weights[name], weight, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_resume_after_sigkill_continues_the_step_count(tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", range(1, 41))  # 40 pairs, batch 4: 10 steps an epoch
    output_dir = tmp_path / "model"
    args = [*TINY, *QUICK, "--train_file", str(train_file), "--source_lang", "en", "--target_lang", "de"]
    args += ["--output_dir", str(output_dir), "--save_strategy", "steps", "--save_steps", "5", "--logging_steps", "1"]
    command = [sys.executable, str(ROOT / "train.py"), *args, "--max_steps", "100000"]
    process = subprocess.Popen(command, env=environment(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = output_dir / "checkpoint-5"
    deadline = time.monotonic() + 120
    while not (checkpoint / "rng_state.pth").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # let the rest of the checkpoint land
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert (checkpoint / "trainer_state.json").is_file()
    assert not (output_dir / "config.json").exists()  # killed runs leave checkpoints, not a final model

    result = run_train(*args, "--max_steps", "12", "--resume_from_checkpoint", str(checkpoint))
    assert result.returncode == 0, result.stderr[-3000:]
    logged_epochs = [
        json.loads(line.replace("'", '"'))["epoch"] for line in result.stdout.splitlines() if "'loss'" in line
    ]
    # logging every step: the resumed run logs steps 6..12, epoch = step / 10.
    assert [float(epoch) for epoch in logged_epochs] == pytest.approx([step / 10 for step in range(6, 13)])
    state = json.loads((output_dir / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["global_step"] == 12
    assert_loads_and_translates(output_dir)


@pytest.mark.slow
def test_a_run_that_diverges_says_so_last_and_still_saves_its_model(tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", range(1, 9))
    output_dir = tmp_path / "model"
    # Adam's first steps move each weight by about the learning rate: 1e6, unclipped, overflows the logits.
    result = run_train(
        *TINY, *QUICK, "--train_file", str(train_file), "--source_lang", "en", "--target_lang", "de",
        *("--max_steps", "4", "--learning_rate", "1e6", "--max_grad_norm", "0", "--output_dir", str(output_dir)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    weights = safetensors.torch.load_file(output_dir / "model.safetensors")
    broken = sum(not torch.isfinite(weight).all() for weight in weights.values())
    assert broken > 0  # the run did diverge
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("warning: training diverged: ") and "hold NaN or inf" in last
    assert "--learning_rate" in last


@pytest.mark.slow
def test_evaluations_during_training_leave_the_trained_model_unchanged(tmp_path):
    args = [*TINY, *QUICK, "--max_tokens", "300", "--max_steps", "6"]
    plain = run_train(*args, "--output_dir", str(tmp_path / "plain"))
    evaluated = run_train(
        *args, "--eval_strategy", "steps", "--eval_steps", "2", "--output_dir", str(tmp_path / "evaluated")
    )
    assert plain.returncode == 0 and evaluated.returncode == 0, (plain.stderr + evaluated.stderr)[-3000:]
    weights = [(tmp_path / name / "model.safetensors").read_bytes() for name in ("plain", "evaluated")]
    assert weights[0] == weights[1]  # dropout drew the same masks with and without the three evaluations


def bad_input_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    good = write_jsonl(tmp_path / "good.jsonl", range(1, 9))
    no_column = tmp_path / "no_column.jsonl"
    no_column.write_text('{"text": "one"}\n{"text": "two"}\n')
    empty_line = tmp_path / "empty_line.jsonl"
    empty_line.write_text(good.read_text().replace("\n", "\n\n", 1))
    mismatched = tmp_path / "mismatched.tsv"
    mismatched.write_text("en\tde\none\teins\ntwo\n")
    held = tmp_path / "held"
    held.mkdir()
    (held / "config.json").write_text("{}")
    lang = ["--source_lang", "en", "--target_lang", "de"]
    return {
        "missing file": (["--train_file", str(tmp_path / "nope.jsonl"), *lang], "nope.jsonl: no such file"),
        "no translation column": (["--train_file", str(no_column), *lang], "no 'translation' column"),
        "language not in data": (["--train_file", str(good), "--source_lang", "fr", "--target_lang", "de"], "'fr'"),
        "empty line": (["--train_file", str(empty_line), *lang], "line 2 is empty"),
        "mismatched pair counts": (["--train_file", str(mismatched), *lang], "mismatched pair counts"),
        "unknown preset": (["--preset", "huge"], "unknown preset 'huge'"),
        "output dir holds a model": (["--output_dir", str(held)], "already holds a model"),
        "config name without a dataset name": (
            ["--train_file", str(good), *lang, "--dataset_config_name", "de-en"],
            "--dataset_config_name 'de-en' names a configuration of --dataset_name",
        ),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "no translation column",
        "language not in data",
        "empty line",
        "mismatched pair counts",
        "unknown preset",
        "output dir holds a model",
        "config name without a dataset name",
    ],
)
def test_bad_input_is_one_line_on_stderr_with_exit_code_2_and_writes_nothing(tmp_path, case):
    args, expected = bad_input_cases(tmp_path)[case]
    output_dir = tmp_path / "out"
    if "--output_dir" not in args:
        args = [*args, "--output_dir", str(output_dir)]
    assert_usage_error(tmp_path, [*TINY, "--max_steps", "1", *args], expected)  # the case's flags come last and win


def assert_usage_error(
    tmp_path: Path, argv: list[str], expected: str, launcher: tuple[str, ...] = (sys.executable,)
) -> None:
    """train.py with `argv` exits 2 with one `error:` line on stderr holding `expected`, and writes nothing."""
    before = sorted(path.name for path in tmp_path.rglob("*"))
    result = run_train(*argv, launcher=launcher)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(path.name for path in tmp_path.rglob("*")) == before


def embedded_bpe_minimum() -> int:
    """The smallest BPE of the embedded task's training text: the special tokens and each character once.

    The pre-tokenizer replaces spaces by the word marker "▁"; the number words need no NFKC change."""
    pairs = embedded_number_task()["train"]["translation"]
    characters = set("".join(sentence for pair in pairs for sentence in pair.values()))
    return len(SPECIAL_TOKENS) + len(characters - {" "} | {"▁"})


def bad_file_and_argument_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Full command lines (a recipe must come first) and what the one error line must say."""
    good = json.dumps({"translation": {"en": "one", "de": "eins"}})
    number = tmp_path / "number.jsonl"
    number.write_text(f'{good}\n{{"translation": {{"en": 2, "de": "zwei"}}}}\n', encoding="utf-8")
    null = tmp_path / "null.jsonl"
    null.write_text(f'{good}\n{good}\n{{"translation": {{"en": "three", "de": null}}}}\n', encoding="utf-8")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(f'{good}\n{{"translation": {{"en": "five", "de": "fünf"}}}}\n'.encode("latin-1"))
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("preset: tiny\nmax_steps: 1\n", encoding="utf-16")
    # 300 distinct characters in 30 words: the default size (a quarter of the words, at least 128) cannot hold them.
    pairs = [{"en": f"n{i}", "zh": "".join(chr(0x4E00 + i * 10 + j) for j in range(10))} for i in range(30)]
    characters = tmp_path / "characters.jsonl"
    characters.write_text("".join(json.dumps({"translation": pair}) + "\n" for pair in pairs), encoding="utf-8")
    text = "".join(sentence for pair in pairs for sentence in pair.values())
    needed = len(SPECIAL_TOKENS) + len(set(text) | {"▁"})  # each word starts with the word marker
    out = ["--output_dir", str(tmp_path / "out")]
    data = [*TINY, "--max_steps", "1", "--source_lang", "en", "--target_lang", "de", *out, "--train_file"]
    arguments = [*TINY, "--max_steps", "1", *out]
    minimum = embedded_bpe_minimum()
    return {
        "number where a sentence belongs": ([*data, str(number)], "number.jsonl: line 2: the 'en' sentence is 2;"),
        "null sentence": ([*data, str(null)], "null.jsonl: line 3: the 'de' sentence is null; expected a string"),
        "bytes that are not UTF-8": ([*data, str(latin1)], "latin1.jsonl: line 2 is not UTF-8 (byte 0xfc)"),
        "folder given as the train file": ([*data, str(folder)], "folder.jsonl is a folder; expected a file"),
        "UTF-16 recipe": ([str(recipe), *out], "recipe.yaml is UTF-16 text; expected UTF-8"),
        "batch size 0": (
            [*arguments, "--per_device_train_batch_size", "0"],
            "--per_device_train_batch_size is 0; expected a positive integer",
        ),
        "negative learning rate": (
            [*arguments, "--learning_rate", "-0.001"],
            "--learning_rate is -0.001; expected a positive number",
        ),
        "vocab_size 0": (
            [*arguments, "--vocab_size", "0"],
            f"--vocab_size 0 is too small for this text; expected at least {minimum}",
        ),
        "vocab_size 1": (
            [*arguments, "--vocab_size", "1"],
            f"--vocab_size 1 is too small for this text; expected at least {minimum}",
        ),
        "default vocab_size too small": (
            [
                *TINY,
                "--max_steps",
                "1",
                *out,
                "--train_file",
                str(characters),
                "--source_lang",
                "en",
                "--target_lang",
                "zh",
            ],
            f"error: the default vocabulary size, 128, is too small for this text; expected at least {needed}: the 4 "
            f"special tokens and its {needed - 4} distinct characters; pass --vocab_size {needed} or more",
        ),
        "max_source_length 0": (
            [*arguments, "--max_source_length", "0"],
            "--max_source_length is 0; expected at least 2",
        ),
        "max_target_length 0": (
            [*arguments, "--max_target_length", "0"],
            "--max_target_length is 0; expected at least 2",
        ),
        "no epochs": (
            [*TINY, *out, "--num_train_epochs", "0"],
            "nothing to train: --num_train_epochs is 0.0 and --max_steps is -1",
        ),
        "no epochs and no steps": (
            [*TINY, *out, "--num_train_epochs", "0", "--max_steps", "0"],
            "nothing to train: --num_train_epochs is 0.0 and --max_steps is 0",
        ),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        "number where a sentence belongs",
        "null sentence",
        "bytes that are not UTF-8",
        "folder given as the train file",
        "UTF-16 recipe",
        "batch size 0",
        "negative learning rate",
        "vocab_size 0",
        "vocab_size 1",
        "default vocab_size too small",
        "max_source_length 0",
        "max_target_length 0",
        "no epochs",
        "no epochs and no steps",
    ],
)
def test_bad_file_or_argument_is_one_error_line_naming_it_and_what_was_expected(tmp_path, case):
    argv, expected = bad_file_and_argument_cases(tmp_path)[case]
    assert_usage_error(tmp_path, argv, expected)


# A pair past a stream's first, which is the only one checked before the stream is read, and what train.py says.
STREAMED_BAD_PAIRS = {
    "no target sentence": ({"en": "x"}, "pair 6 has no 'de' sentence"),
    "null target": ({"en": "x", "de": None}, "pair 6 has no 'de' sentence"),
    "blank target": ({"en": "x", "de": " "}, "pair 6 has an empty 'de' sentence"),
}


def test_a_streamed_sentence_that_is_no_string_is_named_with_what_it_holds():
    """(A stream of JSON lines mixing strings and numbers in one field is refused by older datasets' reader itself.)"""
    assert pair_problem({"en": "x", "de": 5}, ("en", "de")) == "holds 5 as its 'de' sentence; expected a string"
    assert pair_problem({"en": "x", "de": "y"}, ("en", "de")) is None


def test_a_streamed_translation_held_as_a_json_string_is_named_as_that(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"translation": json.dumps({"en": "one", "de": "eins"})}) + "\n", encoding="utf-8")
    data = DataArguments(train_file=str(path), source_lang="en", target_lang="de")
    with pytest.raises(UsageError) as error:
        stream_raw_datasets(data)
    held = repr(json.dumps({"en": "one", "de": "eins"}))
    assert str(error.value) == f"{path}: pair 1 has no 'translation' holding {{language: sentence}} (found: {held})"


@pytest.mark.slow
@pytest.mark.parametrize("case", STREAMED_BAD_PAIRS)
@pytest.mark.parametrize("tokenizer", ["learned", "given"])  # given: training is the first to read the pair
def test_an_unusable_streamed_pair_is_one_error_line_naming_it(tmp_path, case, tokenizer):
    pair, expected = STREAMED_BAD_PAIRS[case]
    pairs = [{"en": num2words(n), "de": num2words(n, lang="de")} for n in range(1, 6)] + [pair]
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps({"translation": pair}) + "\n" for pair in pairs), encoding="utf-8")
    args = ["--train_file", str(train_file), "--source_lang", "en", "--target_lang", "de", "--streaming"]
    if tokenizer == "given":
        texts = [sentence for pair in pairs[:5] for sentence in pair.values()]
        train_bpe_tokenizer(texts, 64).save_pretrained(tmp_path / "tokenizer")
        args += ["--tokenizer_name", str(tmp_path / "tokenizer"), "--per_device_train_batch_size", "1"]
    args += ["--max_steps", "8", "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "true"]
    assert_usage_error(tmp_path, [*TINY, *args], f"{train_file}: {expected}")


@pytest.mark.slow
def test_unreadable_train_file_is_one_error_line(tmp_path):
    unreadable = write_jsonl(tmp_path / "unreadable.jsonl", range(1, 9))
    unreadable.chmod(0)
    launcher: tuple[str, ...] = (sys.executable,)
    if os.geteuid() == 0:  # root reads any file: run train.py without the capabilities that let it
        assert shutil.which("setpriv"), "setpriv (util-linux) is needed to drop root's file access"
        launcher = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable)
    argv = [*TINY, "--max_steps", "1", "--source_lang", "en", "--target_lang", "de", "--train_file", str(unreadable)]
    expected = "unreadable.jsonl: cannot read the file (Permission denied)"
    assert_usage_error(tmp_path, [*argv, "--output_dir", str(tmp_path / "out")], expected, launcher=launcher)


@pytest.mark.parametrize("suffix, separator", [(".csv", ","), (".tsv", "\t"), (".jsonl", None)])
def test_utf8_byte_order_mark_is_dropped_from_the_first_line(tmp_path, suffix, separator):
    path = tmp_path / f"bom{suffix}"
    if separator is None:
        text = write_jsonl(path, range(1, 4)).read_text(encoding="utf-8")
    else:
        rows = [("en", "de")] + [(num2words(n), num2words(n, lang="de")) for n in range(1, 4)]
        text = "".join(f"{source}{separator}{target}\n" for source, target in rows)
    path.write_text(text, encoding="utf-8-sig")
    assert path.read_bytes().startswith(codecs.BOM_UTF8)
    raw = load_raw_datasets(DataArguments(train_file=str(path), source_lang="en", target_lang="de"))
    expected = [{"en": num2words(n), "de": num2words(n, lang="de")} for n in range(1, 4)]
    assert raw["train"]["translation"] == expected


# Sentences as corpora hold them: characters str.splitlines ends a line at (U+2028, U+0085, a form feed) inside a
# sentence, and quotation marks that open a sentence or a TSV cell, which has no quoting.
AWKWARD_PAIRS = [
    {"en": "one\u2028two", "de": "eins\u2028zwei"},
    {"en": '"Stop," he said.', "de": '"Halt", sagte er.'},
    {"en": "three\x85four", "de": "drei\x0cvier"},
    {"en": 'a "b" c', "de": '"'},
]


def write_pairs(path: Path, pairs: list[dict[str, str]]) -> Path:
    """en-de pairs as a data file of the format its suffix names: JSON lines, a JSON array, CSV (quoted as the csv
    module writes it) or TSV (unquoted)."""
    rows = [("en", "de"), *((pair["en"], pair["de"]) for pair in pairs)]
    if path.suffix == ".jsonl":
        lines = [json.dumps({"translation": pair}, ensure_ascii=False) for pair in pairs]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps([{"translation": pair} for pair in pairs], ensure_ascii=False), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as file:
            csv.writer(file).writerows(rows)
    else:
        path.write_text("".join(f"{en}\t{de}\n" for en, de in rows), encoding="utf-8")
    return path


def read_pairs(data: DataArguments, streaming: bool, split: str = "train") -> list[dict[str, str]]:
    """The pairs of a split as train.py reads them, loaded whole or streamed."""
    if streaming:
        return [row["translation"] for row in stream_raw_datasets(data)[split]]
    return load_raw_datasets(data)[split]["translation"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv"])
@pytest.mark.parametrize("streaming", [False, True], ids=["loaded", "streamed"])
def test_sentences_with_line_separators_and_quotation_marks_load_as_written(tmp_path, suffix, streaming):
    path = write_pairs(tmp_path / f"pairs{suffix}", AWKWARD_PAIRS)
    data = DataArguments(train_file=str(path), source_lang="en", target_lang="de")
    assert read_pairs(data, streaming) == AWKWARD_PAIRS


@pytest.mark.parametrize("streaming", [False, True], ids=["loaded", "streamed"])
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_missing_relative_data_file_names_the_folder_it_was_looked_for_in(tmp_path, monkeypatch, streaming, suffix):
    """A recipe's relative paths are read from the working folder: the error says which, as an absolute path needs
    no such note."""
    monkeypatch.chdir(tmp_path)
    for path, where in ((f"data/train{suffix}", f" (looked for in the working folder {tmp_path})"), ("", "")):
        path = path or str(tmp_path / f"train{suffix}")
        data = DataArguments(train_file=path, source_lang="en", target_lang="de")
        with pytest.raises(UsageError) as raised:
            read_pairs(data, streaming)
        assert str(raised.value) == f"{path}: no such file{where}"


@pytest.mark.parametrize("streaming", [False, True], ids=["loaded", "streamed"])
def test_max_samples_keep_the_first_pairs_of_each_split(tmp_path, streaming):
    pairs = [{"en": f"pair {n}", "de": f"Paar {n}"} for n in range(6)]
    files = {split: str(write_pairs(tmp_path / f"{split}.jsonl", pairs)) for split in ("train", "validation", "test")}
    data = TrainDataArguments(
        train_file=files["train"],
        validation_file=files["validation"],
        test_file=files["test"],
        source_lang="en",
        target_lang="de",
        max_train_samples=4,
        max_eval_samples=10,  # more than the split holds: all of it
    )
    raw = first_samples(stream_raw_datasets(data) if streaming else load_raw_datasets(data), data)
    kept = {split: [row["translation"] for row in raw[split]] for split in raw}
    assert kept == {"train": pairs[:4], "validation": pairs, "test": pairs}


def test_a_streamed_folders_first_pairs_are_read_in_dataloader_workers_too(tmp_path):
    """A folder of two training files: with two DataLoader workers (--dataloader_num_workers), each reading its own
    file, the cut still gives the stream's first pairs, each once."""
    pairs = [{"en": f"pair {n}", "de": f"Paar {n}"} for n in range(12)]
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_pairs(folder / "train-0.jsonl", pairs[:8])
    write_pairs(folder / "train-1.jsonl", pairs[8:])
    data = TrainDataArguments(dataset_name=str(folder), source_lang="en", target_lang="de", max_train_samples=10)
    stream = first_samples(stream_raw_datasets(data), data)["train"]
    loader = torch.utils.data.DataLoader(stream, batch_size=3, num_workers=2, collate_fn=list)
    assert [row["translation"] for batch in loader for row in batch] == pairs[:10]


# The tests' own compressors (the standard library's one-shot functions), by the suffix a compressed file ends in.
COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


def compressed_copy(source: Path, target: Path) -> Path:
    """`source` compressed into `target` with the codec its suffix names."""
    target.write_bytes(COMPRESS[target.suffix.lower()](source.read_bytes()))
    return target


@pytest.mark.parametrize("name", ["pairs.jsonl.gz", "pairs.tsv.bz2", "pairs.csv.xz", "pairs.json.gz", "P.JSONL.BZ2"])
@pytest.mark.parametrize("streaming", [False, True], ids=["loaded", "streamed"])
def test_a_compressed_data_file_reads_as_its_uncompressed_twin_and_is_recorded_by_its_text(tmp_path, name, streaming):
    plain = write_pairs(tmp_path / Path(name.lower()).stem, AWKWARD_PAIRS)
    (tmp_path / "compressed").mkdir()
    compressed = compressed_copy(plain, tmp_path / "compressed" / name)
    data = {
        path: DataArguments(train_file=str(path), source_lang="en", target_lang="de") for path in (plain, compressed)
    }
    assert read_pairs(data[compressed], streaming) == read_pairs(data[plain], streaming) == AWKWARD_PAIRS
    # A resume compares the text's SHA-256, which compressing it anew (another level, time stamp) leaves as it was.
    assert data_record(data[compressed])["train_file_sha256"] == hashlib.sha256(plain.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "name, content, expected",
    [
        (
            "latin1.jsonl",
            '{"translation": {"en": "one", "de": "eins"}}\n{"translation": {"en": "5", "de": "fünf"}}\n',
            "FILE: line 2 is not UTF-8 (byte 0xfc)",
        ),
        (
            "number.jsonl",
            '{"translation": {"en": "one", "de": "eins"}}\n{"translation": {"en": 2, "de": "zwei"}}\n',
            "FILE: line 2: the 'en' sentence is 2;",
        ),
        ("empty_line.tsv", "en\tde\none\teins\n\ntwo\tzwei\n", "FILE: line 3 is empty"),
        ("mismatched.tsv", "en\tde\none\teins\ntwo\n", "FILE: mismatched pair counts: 2 en sentences but 1 de"),
    ],
)
def test_a_compressed_file_is_refused_by_the_checks_and_words_of_its_uncompressed_twin(
    tmp_path, name, content, expected
):
    plain = tmp_path / name
    plain.write_bytes(content.encode("latin-1" if name.startswith("latin1") else "utf-8"))
    compressed = compressed_copy(plain, tmp_path / f"{name}.gz")
    errors = {}
    for path in (plain, compressed):
        with pytest.raises(UsageError) as refused:
            load_raw_datasets(DataArguments(train_file=str(path), source_lang="en", target_lang="de"))
        errors[path] = str(refused.value).replace(str(path), "FILE")
    assert errors[compressed] == errors[plain] and errors[plain].startswith(expected)


@pytest.mark.parametrize("streaming", [False, True], ids=["loaded", "streamed"])
def test_a_dataset_folder_of_compressed_files_reads_as_its_uncompressed_twin(tmp_path, streaming):
    plain, compressed = tmp_path / "plain", tmp_path / "compressed"
    plain.mkdir()
    compressed.mkdir()
    for split, numbers in (("train", range(1, 9)), ("validation", range(20, 24))):
        compressed_copy(write_jsonl(plain / f"{split}.jsonl", numbers), compressed / f"{split}.jsonl.gz")
    data = {
        folder: DataArguments(dataset_name=str(folder), source_lang="en", target_lang="de")
        for folder in (plain, compressed)
    }
    for split, numbers in (("train", range(1, 9)), ("validation", range(20, 24))):
        expected = [{"en": num2words(n), "de": num2words(n, lang="de")} for n in numbers]
        assert read_pairs(data[compressed], streaming, split) == read_pairs(data[plain], streaming, split) == expected
    assert data_record(data[compressed])["train_file_sha256"] == data_record(data[plain])["train_file_sha256"]


def damaged_compressed_files(tmp_path: Path) -> dict[str, Path]:
    """Compressed TSV files that do not decompress whole; 30,000 rows, so that a stream reads its first pairs from
    the file cut short without an error (its first chunk of rows is whole)."""
    plain = tmp_path / "pairs.tsv"
    plain.write_text("en\tde\n" + "one\teins\n" * 30_000, encoding="utf-8")
    damaged = {}
    for name, compression, damage in (
        ("cut short", ".gz", lambda data: data[:-20]),
        ("a byte changed", ".bz2", lambda data: data[:40] + bytes([data[40] ^ 0xFF]) + data[41:]),
        ("not compressed", ".xz", lambda data: plain.read_bytes()),
    ):
        path = compressed_copy(plain, tmp_path / f"{name.replace(' ', '-')}.tsv{compression}")
        path.write_bytes(damage(path.read_bytes()))
        damaged[name] = path
    return damaged


@pytest.mark.parametrize("case", ["cut short", "a byte changed", "not compressed"])
@pytest.mark.parametrize("streaming", [False, True], ids=["loaded", "streamed"])
@pytest.mark.parametrize("source", ["train_file", "dataset_name"])
def test_a_compressed_data_file_cut_short_or_damaged_is_named_before_training(tmp_path, case, streaming, source):
    path = damaged_compressed_files(tmp_path)[case]
    if source == "dataset_name":
        folder = tmp_path / "corpus"
        folder.mkdir()
        path = path.rename(folder / f"train.tsv{path.suffix}")
    data = DataArguments(**{source: str(path.parent if source == "dataset_name" else path)})
    data.source_lang, data.target_lang = "en", "de"
    with pytest.raises(UsageError) as refused:
        (stream_raw_datasets if streaming else load_raw_datasets)(data)
    assert str(refused.value).startswith(f"{path}: cannot decompress it (")
    assert str(refused.value).endswith(f"); expected a whole {path.suffix} file")


@pytest.mark.slow
def test_a_streamed_compressed_file_cut_short_is_one_error_line_before_training(tmp_path):
    """A validation file, which the data record does not read through for its digest as it does the training file."""
    path = damaged_compressed_files(tmp_path)["cut short"]
    argv = [*TINY, *QUICK, "--max_steps", "1", "--streaming", "--source_lang", "en", "--target_lang", "de"]
    argv += ["--train_file", str(write_jsonl(tmp_path / "train.jsonl", range(1, 9))), "--validation_file", str(path)]
    argv += ["--output_dir", str(tmp_path / "out")]
    assert_usage_error(tmp_path, argv, f"{path}: cannot decompress it (Compressed file ended before the end")


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True], ids=["loaded", "streamed"])
def test_compressed_files_train_and_score_as_their_uncompressed_twins(tmp_path, streaming):
    """train.py on a .jsonl.gz training and .tsv.bz2 validation and test files trains the model it trains on them
    uncompressed, and eval.py scores the test file the model's data record names as it scores the plain one."""
    numbers = {"train": range(1, 33), "validation": range(40, 46), "test": range(50, 56)}
    names = {"train": "train.jsonl.gz", "validation": "validation.tsv.bz2", "test": "test.tsv.bz2"}
    files = {"plain": {}, "compressed": {}}
    for kind in files:
        (tmp_path / kind).mkdir()
    for split, name in names.items():
        pairs = [{"en": num2words(n), "de": num2words(n, lang="de")} for n in numbers[split]]
        files["plain"][split] = write_pairs(tmp_path / "plain" / Path(name).stem, pairs)
        files["compressed"][split] = compressed_copy(files["plain"][split], tmp_path / "compressed" / name)
    for kind, data in files.items():
        argv = [*TINY, *QUICK, "--max_steps", "3", "--source_lang", "en", "--target_lang", "de"]
        argv += [item for split, path in data.items() for item in (f"--{split}_file", str(path))]
        argv += ["--output_dir", str(tmp_path / kind / "model"), *(["--streaming"] if streaming else [])]
        result = run_train(*argv)
        assert result.returncode == 0, result.stderr[-3000:]
        result = run_cli("eval.py", "--model", str(tmp_path / kind / "model"), "--max_length_offset", "2")
        assert result.returncode == 0, result.stderr[-3000:]
    plain, compressed = (tmp_path / kind / "model" for kind in files)
    assert (compressed / "model.safetensors").read_bytes() == (plain / "model.safetensors").read_bytes()
    trained = [json.loads((model / "all_results.json").read_text())["eval_loss"] for model in (plain, compressed)]
    assert trained[0] == trained[1]
    records = [json.loads((model / "data_args.json").read_text()) for model in (plain, compressed)]
    assert records[1]["test_file"] == str(files["compressed"]["test"])
    assert records[1]["train_file_sha256"] == records[0]["train_file_sha256"]
    reports = [json.loads((model / "eval_results_test.json").read_text()) for model in (plain, compressed)]
    assert reports[1]["data"] == str(files["compressed"]["test"]) and reports[1]["num_sentences"] == 6
    for name in ("num_sentences", "bleu", "chrf", "bleu_details"):
        assert reports[1][name] == reports[0][name], name
    predictions = [(model / "predictions_test.txt").read_text() for model in (plain, compressed)]
    assert predictions[1] == predictions[0]


@pytest.mark.parametrize(
    "name, format",
    [("p.parquet.gz", ".parquet.gz"), ("p.gz", ".gz"), ("p.jsonl.zip", ".zip"), ("p.txt.bz2", ".txt.bz2")],
)
@pytest.mark.parametrize("streaming", [False, True], ids=["loaded", "streamed"])
def test_an_unknown_data_format_is_refused_listing_the_formats_read(tmp_path, name, format, streaming):
    path = tmp_path / name
    path.write_bytes(b"")
    expected = (
        f"{path}: unknown format {format!r}; expected .json or .jsonl or .parquet or .csv or .tsv, "
        "or .json or .jsonl or .csv or .tsv followed by .gz or .bz2 or .xz (e.g. train.jsonl.gz)"
    )
    with pytest.raises(UsageError) as refused:
        read_pairs(DataArguments(train_file=str(path), source_lang="en", target_lang="de"), streaming)
    assert str(refused.value) == expected


def test_a_parquet_data_file_loads_as_its_json_lines_twin_and_is_checked_like_it(tmp_path):
    pairs = [{"en": num2words(n), "de": num2words(n, lang="de")} for n in range(1, 6)]
    Dataset.from_dict({"translation": pairs}).to_parquet(tmp_path / "pairs.parquet")
    twin = write_jsonl(tmp_path / "pairs.jsonl", range(1, 6))
    loaded = {
        path.suffix: load_raw_datasets(DataArguments(train_file=str(path), source_lang="en", target_lang="de"))
        for path in (tmp_path / "pairs.parquet", twin)
    }
    assert loaded[".parquet"]["train"]["translation"] == loaded[".jsonl"]["train"]["translation"] == pairs
    with pytest.raises(UsageError, match="language 'fr' is not in the data"):
        load_raw_datasets(DataArguments(train_file=str(tmp_path / "pairs.parquet"), source_lang="en", target_lang="fr"))
    Dataset.from_dict({"text": ["one"]}).to_parquet(tmp_path / "plain.parquet")
    with pytest.raises(UsageError, match="no 'translation' column"):
        load_raw_datasets(DataArguments(train_file=str(tmp_path / "plain.parquet"), source_lang="en", target_lang="de"))


def test_a_json_file_holding_one_array_loads_as_its_json_lines_twin_as_datasets_reads_it(tmp_path):
    twin = write_jsonl(tmp_path / "pairs.jsonl", range(1, 6))
    rows = [json.loads(line) for line in twin.read_text().splitlines()]
    array = tmp_path / "pairs.json"
    array.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    data = {
        path.suffix: DataArguments(train_file=str(path), source_lang="en", target_lang="de") for path in (array, twin)
    }
    expected = load_raw_datasets(data[".jsonl"])["train"]["translation"]
    assert load_raw_datasets(data[".json"])["train"]["translation"] == expected
    assert [row["translation"] for row in stream_raw_datasets(data[".json"])["train"]] == expected
    rows[3]["translation"]["de"] = None
    array.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    with pytest.raises(UsageError, match="pairs.json: item 4: the 'de' sentence is null; expected a string"):
        load_raw_datasets(data[".json"])


@pytest.mark.parametrize(
    "bad, expected",
    [
        ({3: {"en": None}}, "pair 4 has no en sentence"),
        ({3: {"de": None}, 5: {"en": None}}, "pair 4 has no de sentence"),
        ({2: {"de": " \u3000"}, 4: {"en": None}}, "pair 3 has an empty de sentence"),
        ({6: {"en": "\t"}}, "pair 7 has an empty en sentence"),
    ],
)
def test_the_first_unusable_pair_of_a_parquet_file_is_named(tmp_path, bad, expected):
    pairs = [{"en": num2words(n), "de": num2words(n, lang="de")} for n in range(1, 9)]
    for index, change in bad.items():
        pairs[index].update(change)
    Dataset.from_dict({"translation": pairs}).to_parquet(tmp_path / "pairs.parquet")
    with pytest.raises(UsageError, match=f"pairs.parquet: (mismatched pair counts: )?{expected}$"):
        load_raw_datasets(DataArguments(train_file=str(tmp_path / "pairs.parquet"), source_lang="en", target_lang="de"))


def test_a_dataset_folder_with_bytes_that_are_not_utf8_is_refused_naming_the_pair(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    lines = write_jsonl(folder / "train.jsonl", range(1, 6)).read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"three", "thr\u00e9e".encode("latin-1"))
    (folder / "train.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(UsageError, match=r"corpus \[train\]: pair 3: the en sentence is not UTF-8; expected UTF-8"):
        load_raw_datasets(DataArguments(dataset_name=str(folder), source_lang="en", target_lang="de"))


def test_a_parquet_file_of_numbers_is_refused_at_its_first_pair(tmp_path):
    Dataset.from_dict({"translation": [{"en": n, "de": n} for n in range(1, 4)]}).to_parquet(tmp_path / "n.parquet")
    with pytest.raises(UsageError, match="n.parquet: pair 1: the en sentence is 1; expected a string"):
        load_raw_datasets(DataArguments(train_file=str(tmp_path / "n.parquet"), source_lang="en", target_lang="de"))


def test_the_corpus_tokenized_in_two_processes_equals_it_tokenized_in_one():
    data = DataArguments(source_lang="en", target_lang="de")
    raw = load_raw_datasets(data)
    tokenizer = train_bpe_tokenizer(corpus_texts(raw, "en", "de"), 200)
    one, two = (tokenize(raw, tokenizer, data, "length", num_proc) for num_proc in (None, 2))
    for split in raw:
        assert two[split].to_dict() == one[split].to_dict()
    assert sorted(one["train"].column_names) == ["attention_mask", "input_ids", "labels", "length"]


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size is 0; expected a positive integer"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps is 0; expected a positive integer"),
        (["--learning_rate", "0"], "--learning_rate is 0.0; expected a positive number"),
        (["--learning_rate", "nan"], "--learning_rate is nan; expected a positive number"),
        (["--learning_rate", "inf"], "--learning_rate is inf; expected a positive number"),
        (["--adam_beta1", "1"], "--adam_beta1 is 1.0; expected a number in [0, 1)"),
        (["--adam_beta2", "nan"], "--adam_beta2 is nan; expected a number in [0, 1)"),
        (["--adam_epsilon", "-1.0"], "--adam_epsilon is -1.0; expected a number >= 0"),
        (["--weight_decay", "-0.1"], "--weight_decay is -0.1; expected a number >= 0"),
        (["--max_grad_norm", "-1"], "--max_grad_norm is -1.0; expected a number >= 0 (0 clips nothing)"),
        (["--warmup_steps", "nan"], "--warmup_steps is nan; expected a number >= 0"),
        (["--warmup_steps", "0"], "--warmup_steps 0 with --lr_scheduler_type inverse_sqrt: sec. 5.3's rate"),
        (["--num_train_epochs", "inf"], "--num_train_epochs is inf; expected a finite number"),
        (["--max_train_seconds", "nan"], "--max_train_seconds is nan; expected a positive number of seconds"),
        (["--seed", "-1"], "--seed is -1; expected an integer in [0, 2^32)"),
        (["--eval_accumulation_steps", "0"], "--eval_accumulation_steps is 0; expected a positive integer"),
        (["--dataloader_num_workers", "-1"], "--dataloader_num_workers is -1; expected an integer >= 0"),
        (["--generation_num_beams", "0"], "--generation_num_beams is 0; expected a positive integer"),
        (["--report_to", "bogus"], "--report_to bogus: expected some of "),
        (["--report_to", UNINSTALLED_REPORTER], f"--report_to {UNINSTALLED_REPORTER}: its library is not installed"),
        (["--torch_compile_backend", "nope"], "--torch_compile_backend nope: expected one of no, eager, "),
        (["--save_strategy", "steps", "--save_steps", "0"], "--save_steps is 0.0 with --save_strategy steps"),
        (["--tokenizer_name", "t5-small", "--vocab_size", "100"], "it cannot resize --tokenizer_name"),
        (["--max_source_length", "1"], "--max_source_length is 1; expected at least 2"),
        (["--max_tokens", "0"], "--max_tokens is 0; expected a positive integer"),
        (["--preprocessing_num_workers", "0"], "--preprocessing_num_workers is 0; expected a positive integer"),
        (
            ["--streaming", "--max_steps", "2", "--preprocessing_num_workers", "2"],
            "--preprocessing_num_workers tokenizes the corpus before training, and --streaming",
        ),
        (["--streaming", "--max_steps", "2", "--max_tokens", "64"], "--max_tokens sorts the whole training split"),
        (
            ["--train_sampling_strategy", "random", "--max_tokens", "64"],
            "--max_tokens batches pairs of similar lengths",
        ),
        (["--save_strategy", "best", "--eval_strategy", "epoch"], "--save_strategy best saves a checkpoint where"),
        (["--auto_find_batch_size", "--max_tokens", "64"], "--auto_find_batch_size retries with a smaller --per_devi"),
        (["--dataloader_drop_last", "--max_tokens", "64"], "--dataloader_drop_last drops an epoch's last batch short"),
        (["--streaming"], "--streaming reads the data without knowing its size, so epochs cannot be counted: give the"),
        (["--config_overrides", "d_ff=48,colour=red"], "--config_overrides d_ff=48,colour=red: colour is not a field"),
        (["--config_overrides", "d_ff=wide"], "--config_overrides d_ff=wide: invalid literal for int()"),
        (["--config_overrides", "d_ff"], "expected key=value pairs joined by commas"),
        (["--attn_implementation", "nope"], "--attn_implementation nope: "),
        (["--metric_for_best_model", "bleu"], "an evaluation reports loss, nll_loss, perplexity; bleu, chrf and gen"),
        (
            ["--metric_for_best_model", "eval_perplexity", "--predict_with_generate", "true"],
            "--metric_for_best_model eval_perplexity: an evaluation reports loss, bleu, chrf, gen_len",
        ),
        (["--bleu_tokenize", "char"], "--bleu_tokenize char applies to the BLEU of --predict_with_generate or --do_p"),
        (["--bleu_tokenize", "mecab"], "argument --bleu_tokenize/--bleu-tokenize: invalid choice: 'mecab'"),
        (["--lr_scheduler_type", "cosine_with_min_lr"], "--lr_scheduler_type cosine_with_min_lr: One of min_lr"),
        (["--eval_do_concat_batches", "false"], "--eval_do_concat_batches false hands the metrics one list per"),
        (["--batch_eval_metrics", "true"], "--batch_eval_metrics: train.py's metrics score the whole evaluation"),
        (
            ["--save_strategy", "best", "--metric_for_best_model", "loss", "--eval_strategy", "no"],
            "--save_strategy best saves a checkpoint when an evaluation finds a new best, and --eval_strategy no",
        ),
        (
            ["--metric_for_best_model", "nll_loss", "--prediction_loss_only", "true"],
            "--metric_for_best_model nll_loss: an evaluation reports loss with --prediction_loss_only",
        ),
        (["--max_steps", "abc"], "argument --max_steps/--max-steps: invalid int value: 'abc'"),  # argparse's, alone
        (["--save_strategy", "sometimes"], "argument --save_strategy/--save-strategy: invalid choice: 'sometimes'"),
        (["--no_such_flag", "1"], "error: unknown flag --no_such_flag (python train.py --help lists them)"),
        (["--no_such_flag=1"], "error: unknown flag --no_such_flag (python train.py --help lists them)"),
        (["--max_step", "2"], "error: unknown flag --max_step (python train.py --help lists them)"),  # no shortening
        (["--warmup_ratio", "0.1"], "them); transformers 5 has no --warmup_ratio: use --warmup_steps with a value bel"),
        (["--group_by_length"], "transformers 5 has no --group_by_length: use --train_sampling_strategy group_by_len"),
        (["recipe.txt"], "error: unexpected argument recipe.txt: expected --flag value pairs, after a recipe file"),
    ],
)
def test_argument_checks_run_before_the_data_is_loaded(tmp_path, capsys, flags, expected):
    missing = str(tmp_path / "missing.jsonl")  # loading it would fail: the argument must be refused first
    argv = ["--train_file", missing, "--source_lang", "en", "--target_lang", "de", "--output_dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        train.main([*argv, *flags])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


@pytest.mark.parametrize("existed", [False, True], ids=["new-folder", "folder-there-before"])
def test_a_run_stopped_before_it_writes_anything_leaves_no_new_output_dir(tmp_path, capsys, existed):
    """The --max_tokens check runs once Trainer exists (which creates output_dir); a folder made for the run is removed
    again, one that was there before stays."""
    output_dir = tmp_path / "model"
    if existed:
        output_dir.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        train.main([*TINY, *QUICK, "--max_steps", "2", "--max_tokens", "5", "--output_dir", str(output_dir)])
    assert exit_info.value.code == 2
    assert "--max_tokens 5 cannot hold the longest pair" in capsys.readouterr().err
    assert output_dir.exists() == existed
    assert sorted(path.name for path in tmp_path.iterdir()) == (["model"] if existed else [])


def test_perplexity_as_the_metric_for_the_best_model_keeps_the_lowest():
    """Trainer takes higher as better for every metric whose name does not end in "loss"."""
    for metric, greater in (("perplexity", False), ("eval_perplexity", False), ("nll_loss", False), ("bleu", True)):
        flags = [
            "--output_dir",
            "out",
            "--metric_for_best_model",
            metric,
            "--predict_with_generate",
            str(metric == "bleu"),
        ]
        model_args, _, args = train.parse_arguments(flags)
        train.check_arguments(model_args, args)
        assert args.greater_is_better is greater, metric


@pytest.mark.parametrize(
    "flags, expected",
    [
        (
            ["--position_embedding_type", "learned", "--max_position_embeddings", "8", "--max_target_length", "8"],
            "--max_source_length / --max_target_length (256 / 8) exceed the 8 learned positions",
        ),
        (
            ["--eval_strategy", "steps", "--eval_steps", "1"],
            "--eval_strategy steps evaluates on a validation split, and the data has none: pass --validation_file",
        ),
        (
            ["--eval_on_start", "true"],
            "--eval_on_start evaluates on a validation split before training, and the data has none: pass --valida",
        ),
        (
            ["--per_device_train_batch_size", "9", "--dataloader_drop_last", "true"],
            "--dataloader_drop_last drops every batch: the training split's 8 pairs fill none of "
            "--per_device_train_batch_size 9; lower the batch size",
        ),
    ],
    ids=[
        "learned-positions-shorter-than-the-data",
        "evaluation-without-validation-data",
        "evaluation-on-start-without-validation-data",
        "drop-last-leaving-no-batch",
    ],
)
def test_settings_the_data_cannot_train_with_are_refused_before_training(tmp_path, capsys, flags, expected):
    data = ["--train_file", str(write_jsonl(tmp_path / "train.jsonl", range(1, 9))), "--source_lang", "en"]
    argv = [*TINY, *QUICK, *data, "--target_lang", "de", "--max_steps", "2", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        train.main([*argv, *flags])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_do_predict_scores_the_test_split_and_leaves_the_runs_settings_as_they_were(tmp_path, capsys):
    output_dir = tmp_path / "out"
    train.main([*TINY, *QUICK, "--max_steps", "2", "--do_predict", "true", "--output_dir", str(output_dir)])
    results = json.loads((output_dir / "all_results.json").read_text())
    assert {"test_loss", "test_bleu", "test_chrf", "test_gen_len", "test_exact_match"} <= set(results)
    assert "test split (99 sentences): BLEU " in capsys.readouterr().out
    saved = torch.load(output_dir / "training_args.bin", weights_only=False)
    assert saved.predict_with_generate is False  # as the run was trained, not as the test split was translated

    data = ["--train_file", str(write_jsonl(tmp_path / "train.jsonl", range(1, 9))), "--source_lang", "en"]
    with pytest.raises(SystemExit):
        train.main([*TINY, *QUICK, *data, "--target_lang", "de", "--do_predict", "true", "--output_dir", "unused"])
    assert "--do_predict translates the test split, and the data has none" in capsys.readouterr().err


def test_generated_scores_record_the_beam_size_they_were_decoded_with_beside_the_saved_default(tmp_path):
    """--generation_num_beams decodes the test split with another beam than generation_config.json saves: all_results
    and the card say which, beside test_bleu, where the card's decoding line gives the saved default."""
    output_dir = tmp_path / "out"
    data = ["--do_predict", "true", "--max_predict_samples", "4"]
    decoding = ["--generation_num_beams", "2", "--generation_max_length", "4"]
    train.main([*TINY, *QUICK, "--max_steps", "1", *data, *decoding, "--output_dir", str(output_dir)])
    results = json.loads((output_dir / "all_results.json").read_text())
    saved = json.loads((output_dir / "generation_config.json").read_text())
    assert saved["num_beams"] == 4 and "test_bleu" in results
    assert (results["test_num_beams"], results["test_length_penalty"]) == (2, saved["length_penalty"])
    card = (output_dir / "README.md").read_text()
    assert "| test_num_beams | 2 |" in card and "Decoding defaults (generation_config.json): beam size 4," in card


def test_all_results_and_the_card_say_how_many_pairs_the_validation_and_test_scores_cover(tmp_path):
    """--max_eval_samples and --max_predict_samples cut the splits scored: eval_samples and test_samples say so."""
    output_dir = tmp_path / "out"
    cuts = ["--max_eval_samples", "3", "--do_predict", "true", "--max_predict_samples", "4"]
    train.main(
        [*TINY, *QUICK, "--max_steps", "1", *cuts, "--generation_max_length", "4", "--output_dir", str(output_dir)]
    )
    results = json.loads((output_dir / "all_results.json").read_text())
    assert (results["eval_samples"], results["test_samples"]) == (3, 4)
    card = (output_dir / "README.md").read_text()
    assert "| eval_samples | 3 |" in card and "| test_samples | 4 |" in card


def test_neftune_noise_reaches_the_embeddings_the_encoder_and_decoder_read_in_training_only(tmp_path):
    """transformers hooks get_input_embeddings(), the encoder's alone: the decoder's input embeddings get it too."""
    tokenizer, rows = number_rows(range(1, 5))
    batch = DataCollatorForSeq2Seq(tokenizer)(rows)
    losses = {}
    for alpha in (None, 50.0):
        torch.manual_seed(0)
        model = one_layer_model(tokenizer, dropout=0.0)
        args = Seq2SeqTrainingArguments(tmp_path, report_to=[], use_cpu=True, neftune_noise_alpha=alpha)
        VanillaTrainer(model=model, args=args, processing_class=tokenizer)
        losses[alpha] = [model.train()(**batch).loss.item(), model.train()(**batch).loss.item()]
        losses[alpha].append(model.eval()(**batch).loss.item())
    assert losses[None][0] == losses[None][1] and losses[50.0][0] != losses[50.0][1]  # fresh noise each forward
    assert losses[50.0][2] == losses[None][2]  # none in evaluation
    # After a resize the two stacks call one embedding module (set_input_embeddings, as Marian's): hooked once.
    model = one_layer_model(tokenizer, dropout=0.0)
    model.resize_token_embeddings(len(tokenizer) + 8)
    VanillaTrainer(model=model, args=args, processing_class=tokenizer)
    assert model.model.encoder.embed_tokens is model.model.decoder.embed_tokens
    assert len(model.model.encoder.embed_tokens._forward_hooks) == 1


def test_the_default_peak_learning_rate_counts_a_fractional_warmup_in_steps(tmp_path):
    """--warmup_steps 0.5 of 4 steps is 2 steps: the schedule peaks at (d_model * 2)^-0.5, as with --warmup_steps 2."""
    argv = [*TINY, *QUICK, "--max_steps", "4", "--logging_steps", "1", "--output_dir", str(tmp_path / "out")]
    train.main([*argv, "--warmup_steps", "0.5"])
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    rates = [entry["learning_rate"] for entry in history if "learning_rate" in entry]
    assert max(rates) == pytest.approx((16 * 2) ** -0.5)


def write_parquet_folder(folder: Path, splits: dict[str, range]) -> Path:
    """A local dataset folder as `datasets` names its files: <split>-00000-of-00001.parquet."""
    folder.mkdir()
    for split, numbers in splits.items():
        pairs = [{"en": num2words(n), "de": num2words(n, lang="de")} for n in numbers]
        Dataset.from_dict({"translation": pairs}).to_parquet(folder / f"{split}-00000-of-00001.parquet")
    return folder


@pytest.mark.parametrize("streaming", [False, True], ids=["loaded", "streamed"])
def test_a_dataset_folder_of_csv_files_with_a_column_per_language_reads_as_translation_pairs(tmp_path, streaming):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for split, numbers in (("train", range(1, 9)), ("validation", range(9, 12))):
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["de", "en", "source"])
            writer.writerows([num2words(n, lang="de"), num2words(n), "numbers"] for n in numbers)
    args = DataArguments(dataset_name=str(folder), source_lang="en", target_lang="de")
    raw = (stream_raw_datasets if streaming else load_raw_datasets)(args)
    first = next(iter(raw["validation"]))
    assert first == {"translation": {"en": "nine", "de": "neun"}}
    assert len(list(raw["train"])) == 8


@pytest.mark.parametrize("source", ["parquet folder", "json lines file"])
@pytest.mark.slow
def test_streaming_trains_for_max_steps_reading_the_data_as_it_goes(tmp_path, source):
    if source == "parquet folder":
        data = ["--dataset_name", str(write_parquet_folder(tmp_path / "corpus", {"train": range(1, 21)}))]
    else:
        data = ["--train_file", str(write_jsonl(tmp_path / "train.jsonl", range(1, 21)))]
    output_dir = tmp_path / "model"
    cache = tmp_path / "datasets-cache"
    args = [*TINY, *QUICK, *data, "--source_lang", "en", "--target_lang", "de", "--output_dir", str(output_dir)]
    # 20 pairs at 4 a batch: 8 steps read the stream one and a half times.
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, "--streaming", "--max_steps", "8"],
        capture_output=True,
        text=True,
        env=dict(environment(), HF_DATASETS_CACHE=str(cache)),
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--streaming: learning the BPE on (at most) the first 100,000 sentence pairs" in result.stdout
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 8
    assert_loads_and_translates(output_dir)
    assert not list(cache.rglob("*.arrow"))  # read as it was consumed, never converted into a cached Arrow table


@pytest.mark.slow
def test_a_stream_resumed_in_a_later_pass_saves_the_uninterrupted_runs_model(tmp_path):
    """A stream's length is unknown until its first pass ends; the checkpoints after it record that pass' steps, and a
    run resumed from one continues inside its pass, at its batch. A checkpoint without the record (an older one) is
    resumed as Trainer does, from the next pass' start, with a warning."""
    data = ["--train_file", str(write_jsonl(tmp_path / "train.jsonl", range(1, 21))), "--source_lang", "en"]
    args = [*TINY, *QUICK, *data, "--target_lang", "de", "--streaming"]
    args += ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "3"]  # 20 pairs, 4 a batch: 5 a pass
    whole = tmp_path / "whole"
    assert run_train(*args, "--output_dir", str(whole)).returncode == 0
    unrecorded = tmp_path / "unrecorded-6"
    shutil.copytree(whole / "checkpoint-6", unrecorded)
    state = json.loads((unrecorded / "trainer_state.json").read_text())
    assert state["stateful_callbacks"].pop("StreamPasses") == {"args": {"steps": 5}, "attributes": {}}
    (unrecorded / "trainer_state.json").write_text(json.dumps(state))
    warning = "stopped after 1 whole pass(es) over the --streaming data; the resumed run trains the next pass"
    for checkpoint, exact in ((whole / "checkpoint-3", True), (whole / "checkpoint-6", True), (unrecorded, False)):
        resumed = tmp_path / f"from-{checkpoint.name}"
        result = run_train(*args, "--output_dir", str(resumed), "--resume_from_checkpoint", str(checkpoint))
        assert result.returncode == 0, result.stderr[-3000:]
        assert (warning in result.stderr) != exact, result.stderr[-3000:]
        same = (resumed / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
        assert same == exact, checkpoint


class WideFeedForwardConfig(VanillaConfig):
    """VanillaConfig with one more field, as a user adding a hyper-parameter would write it.

    Args:
        d_ff_multiplier: d_ff as a multiple of d_model.
    """

    def __init__(self, d_ff_multiplier: int = 4, **kwargs):
        self.d_ff_multiplier = d_ff_multiplier
        super().__init__(**kwargs)


def small_bpe():
    return train_bpe_tokenizer([num2words(n, lang=lang) for n in range(1, 100) for lang in ("en", "de")], 60)


def test_every_config_field_is_a_flag_and_a_new_field_of_a_subclass_becomes_one():
    paper = ["d_model", "num_heads", "d_ff", "encoder_layers", "decoder_layers", "dropout", "label_smoothing"]
    variants = ["position_embedding_type", "norm_first", "attention_dropout", "activation_function"]
    rest = ["scale_embedding", "max_position_embeddings", "tie_word_embeddings"]
    assert set(paper + variants + rest) <= set(HfArgumentParser(ModelArguments).parse_args([]).__dict__)
    parser = HfArgumentParser(model_arguments(WideFeedForwardConfig))
    assert "D_ff as a multiple of d_model." in " ".join(parser.format_help().split())
    (model_args,) = parser.parse_args_into_dataclasses(["--preset", "tiny", "--d_ff_multiplier", "8", "--dropout", "0"])
    config = build_config(model_args, small_bpe())
    assert type(config) is WideFeedForwardConfig and config.d_ff_multiplier == 8
    assert (config.d_model, config.dropout, config.vocab_size) == (64, 0.0, 60)


def test_a_flags_help_is_its_docstring_entry_with_the_lines_indented_below_it():
    helps = {action.dest: action.help for action in argument_parser()._actions}
    assert helps["max_tokens"] == (
        "Batches of at most this many padded source + target tokens, of pairs of similar lengths (sec. 5.1: about "
        "25000 + 25000), in place of --per_device_train_batch_size sentences."
    )
    assert helps["test_file"] == "Same format as --train_file."


def test_the_help_of_trainer_flags_that_train_py_reads_its_own_way_says_how():
    """Trainer's own help would misstate train.py for these: `last` resumes, the output limit is sec. 6.1's, the model
    smooths its own loss, and train.py trains and evaluates without --do_train / --do_eval."""
    helps = {action.dest: action.help for action in argument_parser()._actions}
    assert "or last: the newest complete checkpoint" in helps["resume_from_checkpoint"]
    assert f"longest input + {MAX_LENGTH_OFFSET})" in helps["generation_max_length"]
    assert helps["label_smoothing_factor"].startswith("Must stay 0")
    assert helps["do_train"] == "Not read: train.py always trains."
    assert helps["do_eval"].startswith("Not read: train.py evaluates on the validation split whenever there is one")


def test_config_overrides_set_fields_over_the_preset_and_named_flags_win_over_them():
    overrides = "d_ff=48,activation_function=gelu,norm_first=true,attention_dropout=0.2"
    model_args, _, _ = parse_arguments(["--preset", "tiny", "--config_overrides", overrides, "--d_ff", "40"])
    config = build_config(model_args, small_bpe())
    assert (config.d_ff, config.activation_function, config.norm_first, config.attention_dropout) == (
        40,
        "gelu",
        True,
        0.2,
    )
    assert (config.d_model, config.num_heads) == (PRESETS["tiny"]["d_model"], PRESETS["tiny"]["num_heads"])


def number_rows(numbers) -> tuple:
    """A BPE of 60 over the English and German words of 1-199, and the English -> German pairs of `numbers`
    tokenized with it (input_ids and labels)."""
    texts = [num2words(n, lang=lang) for n in range(1, 200) for lang in ("en", "de")]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=60)
    pairs = [(num2words(n), num2words(n, lang="de")) for n in numbers]
    return tokenizer, [{"input_ids": tokenizer(s)["input_ids"], "labels": tokenizer(t)["input_ids"]} for s, t in pairs]


def one_layer_model(tokenizer, **overrides) -> VanillaForConditionalGeneration:
    """A model of width 16 and one encoder and one decoder layer over the tokenizer's vocabulary."""
    config = VanillaConfig(
        vocab_size=len(tokenizer), d_model=16, num_heads=2, d_ff=32, encoder_layers=1, decoder_layers=1, **overrides
    )
    return VanillaForConditionalGeneration(config)


def test_a_saved_model_keeps_its_decoder_cache_while_training_runs_without(tmp_path):
    """Trainer sets config.use_cache from --use_cache (False) for training; the saved config.json says true, as a
    model made for decoding does, so the loaded model's forward returns its cache; the training model's stays off."""
    tokenizer, rows = number_rows((3, 21, 117, 40))
    model = one_layer_model(tokenizer)
    args = Seq2SeqTrainingArguments(tmp_path / "run", max_steps=1, save_steps=1, report_to=[], use_cpu=True)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model)
    trainer = VanillaTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        data_collator=collator,
    )
    assert model.config.use_cache is False  # Trainer's, for training
    trainer.train()
    trainer.save_model()
    assert model.config.use_cache is False
    for folder in (tmp_path / "run", tmp_path / "run" / "checkpoint-1"):
        assert json.loads((folder / "config.json").read_text())["use_cache"] is True
        loaded = AutoModelForSeq2SeqLM.from_pretrained(folder)
        outputs = loaded(input_ids=torch.tensor([rows[0]["input_ids"]]), decoder_input_ids=torch.tensor([[1]]))
        assert outputs.past_key_values is not None


def test_evaluation_reports_the_plain_cross_entropy_and_perplexity_beside_the_smoothed_loss(tmp_path):
    # Targets of different lengths, so batches carry padding and the mean must be over tokens, not sentences.
    tokenizer, rows = number_rows((3, 21, 117, 40, 1999, 8))
    model = one_layer_model(tokenizer).eval()
    args = Seq2SeqTrainingArguments(tmp_path, per_device_eval_batch_size=4, report_to=[], use_cpu=True)
    trainer = VanillaTrainer(
        model=model,
        args=args,
        eval_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        compute_metrics=nll_metrics,
        preprocess_logits_for_metrics=summed_nll_per_sentence,
    )
    metrics = trainer.evaluate()

    # The reference: one sentence at a time, no padding, -log p of each target token summed over the whole set.
    total, tokens = 0.0, 0
    with torch.no_grad():
        for row in rows:
            labels = torch.tensor([row["labels"]])
            logits = model(input_ids=torch.tensor([row["input_ids"]]), labels=labels).logits
            total -= logits.log_softmax(-1).gather(-1, labels[..., None]).sum().item()
            tokens += labels.numel()
    assert metrics["eval_nll_loss"] == pytest.approx(total / tokens, rel=1e-5)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-5)
    # eval_loss stays the training objective, smoothed with epsilon_ls = 0.1 (sec. 5.4): over the same tokens, and for
    # an untrained model's near-uniform predictions, it lies only ~4e-4 of it above the plain cross-entropy.
    assert metrics["eval_loss"] != pytest.approx(metrics["eval_nll_loss"], rel=1e-5)


@pytest.mark.parametrize("generate", [False, True], ids=["forward", "generate"])
def test_eval_loss_is_the_models_loss_per_target_token_of_the_whole_set_at_any_eval_batch_size(tmp_path, generate):
    # Targets of different lengths: a mean of the batches' (or the sentences') means would weigh tokens unequally.
    tokenizer, rows = number_rows((3, 21, 117, 40, 1999, 8))
    model = one_layer_model(tokenizer).eval()

    # The reference: one sentence at a time, sec. 5.4's smoothed cross-entropy written out, summed over the set.
    epsilon, total, tokens = model.config.label_smoothing, 0.0, 0
    with torch.no_grad():
        for row in rows:
            labels = torch.tensor(row["labels"])
            log_p = model(input_ids=torch.tensor([row["input_ids"]]), labels=labels[None]).logits[0].log_softmax(-1)
            total -= ((1 - epsilon) * log_p.gather(-1, labels[:, None]).sum() + epsilon * log_p.mean(-1).sum()).item()
            tokens += len(labels)

    for batch_size in (1, len(rows)):
        args = Seq2SeqTrainingArguments(
            tmp_path,
            per_device_eval_batch_size=batch_size,
            predict_with_generate=generate,
            generation_max_length=4,  # the translations are not what is tested
            report_to=[],
            use_cpu=True,
        )
        trainer = VanillaTrainer(
            model=model,
            args=args,
            processing_class=tokenizer,
            data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
            compute_metrics=lambda prediction: {},  # with metrics to compute, the generating step runs
        )
        assert trainer.evaluate(Dataset.from_list(rows))["eval_loss"] == pytest.approx(total / tokens, rel=1e-5)
        assert trainer.predict(Dataset.from_list(rows)).metrics["test_loss"] == pytest.approx(total / tokens, rel=1e-5)


def test_evaluation_with_generate_leaves_the_models_generation_config_as_it_was(tmp_path):
    tokenizer, rows = number_rows((3, 21, 117, 40))
    model = one_layer_model(tokenizer).eval()
    model.generation_config = GenerationConfig(num_beams=2, length_penalty=0.6, max_length=12, decoder_start_token_id=1)
    own = model.generation_config.to_diff_dict()
    args = Seq2SeqTrainingArguments(
        tmp_path, per_device_eval_batch_size=4, predict_with_generate=True, report_to=[], use_cpu=True
    )
    collator = DataCollatorForSeq2Seq(tokenizer, model=model)
    trainer = VanillaTrainer(model=model, args=args, processing_class=tokenizer, data_collator=collator)
    predictions = trainer.predict(Dataset.from_list(rows)).predictions
    longest = max(len(row["input_ids"]) for row in rows)
    assert predictions.shape == (4, longest + 50 + 1)  # padded to the step's limit (sec. 6.1), after the start token
    assert model.generation_config.to_diff_dict() == own
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "generation_config.json").read_text())
    assert {name for name in saved if name != "transformers_version"} == set(own) - {"transformers_version"}


@pytest.mark.parametrize("generation_max_length", [None, 20])
def test_evaluation_with_generate_limits_the_output_to_the_input_plus_50_as_eval_py(tmp_path, generation_max_length):
    """Sec. 6.1: "maximum output length during inference to input length + 50", per batch (its longest input), as
    eval.py decodes; not the saved max_length (max_target_length + 1). --generation_max_length still sets its own."""
    tokenizer, rows = number_rows((3, 21, 117, 40, 999, 7))
    model = one_layer_model(tokenizer).eval()
    model.generation_config = GenerationConfig(
        num_beams=2,
        max_length=12,
        decoder_start_token_id=1,
        eos_token_id=2,
        suppress_tokens=[0, 2],  # never ends
    )
    args = Seq2SeqTrainingArguments(
        tmp_path,
        per_device_eval_batch_size=3,
        predict_with_generate=True,
        generation_max_length=generation_max_length,
        report_to=[],
        use_cpu=True,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, model=model)
    trainer = VanillaTrainer(model=model, args=args, processing_class=tokenizer, data_collator=collator)
    predictions = trainer.predict(Dataset.from_list(rows)).predictions
    batches = [rows[:3], rows[3:]]  # in order: predict() does not shuffle
    limits = [max(len(row["input_ids"]) for row in batch) + 50 for batch in batches]
    if generation_max_length is not None:
        limits = [generation_max_length - 1] * 2
    lengths = np.count_nonzero((predictions[:, 1:] >= 0) & (predictions[:, 1:] != tokenizer.pad_token_id), axis=1)
    assert lengths.tolist() == [limits[0]] * 3 + [limits[1]] * 3


def test_a_bleu_tokenizer_that_cannot_load_is_refused_before_training(tmp_path):
    """A Japanese target is scored with ja-mecab, sacreBLEU's choice; without MeCab, train.py says so before it trains
    (not at the first evaluation, nor after the whole run for --do_predict), and writes nothing."""
    data = tmp_path / "data.jsonl"
    pairs = [{"en": "seven", "ja": "七"}, {"en": "twelve", "ja": "十二"}, {"en": "forty", "ja": "四十"}]
    data.write_text("".join(json.dumps({"translation": pair}) + "\n" for pair in pairs))
    no_mecab = tmp_path / "no_mecab"
    (no_mecab / "MeCab").mkdir(parents=True)
    (no_mecab / "MeCab" / "__init__.py").write_text("raise ImportError('No module named MeCab')\n")
    env = environment(PYTHONPATH=f"{no_mecab}{os.pathsep}{ROOT}")
    flags = ("--train_file", str(data), "--test_file", str(data), "--source_lang", "en", "--target_lang", "ja")
    output_dir = tmp_path / "out"
    flags = (*flags, "--do_predict", "--max_steps", "1", "--output_dir", str(output_dir))
    result = run_train(*TINY, *QUICK, *flags, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "target language 'ja' with 'ja-mecab'" in lines[0], result.stderr[-3000:]
    assert not output_dir.exists()


def test_evaluation_with_generate_reports_bleu_chrf_and_length_of_the_generated_translations(tmp_path):
    tokenizer, rows = number_rows((3, 21, 117, 40, 999))
    model = one_layer_model(tokenizer).eval()
    model.generation_config = GenerationConfig(num_beams=1, max_length=12, decoder_start_token_id=1, eos_token_id=2)
    args = Seq2SeqTrainingArguments(
        tmp_path,
        per_device_eval_batch_size=4,
        predict_with_generate=True,
        generation_max_length=12,  # the reference's limit
        report_to=[],
        use_cpu=True,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, model=model)
    compute = translation_metrics(tokenizer, load_metrics())
    trainer = VanillaTrainer(
        model=model, args=args, processing_class=tokenizer, data_collator=collator, compute_metrics=compute
    )
    metrics = trainer.evaluate(Dataset.from_list(rows))
    assert {f"eval_{name}" for name in GENERATION_METRICS} <= set(metrics) and "eval_nll_loss" not in metrics

    # The reference: each sentence generated alone (no padding), scored by sacrebleu directly.
    hypotheses, lengths = [], []
    with torch.no_grad():
        for row in rows:
            generated = model.generate(input_ids=torch.tensor([row["input_ids"]]))[0, 1:].tolist()
            hypotheses.append(tokenizer.decode(generated, skip_special_tokens=True).strip())
            lengths.append(len(generated))
    references = [tokenizer.decode(row["labels"], skip_special_tokens=True).strip() for row in rows]
    assert metrics["eval_bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    assert metrics["eval_chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score)
    assert metrics["eval_gen_len"] == pytest.approx(sum(lengths) / len(lengths))

    # The scores of translations that partly match (this untrained model's are empty): predictions and labels
    # padded as Seq2SeqTrainer pads them, the predictions behind the decoder start token.
    references = ["drei vierzig einundzwanzig sieben", "neun acht sieben sechs fünf", "zwei"]
    hypotheses = ["drei vierzig einundzwanzig acht", "neun acht sieben sechs", "zwei"]
    encoded = [tokenizer(text)["input_ids"] for text in hypotheses]
    assert [tokenizer.decode(ids, skip_special_tokens=True) for ids in encoded] == hypotheses
    width = max(map(len, encoded)) + 1
    predictions = np.array([[1, *ids] + [tokenizer.pad_token_id] * (width - 1 - len(ids)) for ids in encoded])
    labels = [tokenizer(text)["input_ids"] for text in references]
    label_ids = np.array([ids + [-100] * (max(map(len, labels)) - len(ids)) for ids in labels])
    scores = compute(EvalPrediction(predictions=predictions, label_ids=label_ids))
    assert 0 < scores["bleu"] < 100 and 0 < scores["chrf"] < 100
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score)
    assert scores["gen_len"] == pytest.approx(sum(map(len, encoded)) / len(encoded))  # </s> counted, the start not

    # Beam search fills a row that ended early with </s>, not with padding: only the first </s> counts.
    filled = np.where(predictions == tokenizer.pad_token_id, tokenizer.eos_token_id, predictions)
    scores = compute(EvalPrediction(predictions=filled, label_ids=label_ids))
    assert scores["gen_len"] == pytest.approx(sum(map(len, encoded)) / len(encoded))


def test_a_training_step_projects_only_the_labelled_positions_and_keeps_the_loss(tmp_path):
    tokenizer, rows = number_rows((3, 21, 1999))  # targets of different lengths
    model = one_layer_model(tokenizer, dropout=0.0).train()
    collator = DataCollatorForSeq2Seq(tokenizer, model=model)
    args = Seq2SeqTrainingArguments(tmp_path, report_to=[], use_cpu=True)
    trainer = VanillaTrainer(model=model, args=args, processing_class=tokenizer, data_collator=collator)
    batch = collator(rows)
    labelled = int((batch["labels"] != -100).sum())
    assert labelled < batch["labels"].numel()  # the batch has padding

    projected = []
    model.lm_head.register_forward_hook(lambda module, args, output: projected.append(args[0].shape[:-1].numel()))
    step_loss = trainer.compute_loss(model, dict(batch))
    _, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)  # evaluation: every position's logits
    assert projected == [labelled, batch["labels"].numel()]
    assert outputs.logits.shape[:2] == batch["labels"].shape
    torch.testing.assert_close(step_loss, model(**batch).loss)

    # Where Trainer takes the loss from the logits itself, a training step hands it every position's.
    args = Seq2SeqTrainingArguments(tmp_path, report_to=[], use_cpu=True, label_smoothing_factor=0.1)
    trainer = VanillaTrainer(model=model, args=args, processing_class=tokenizer, data_collator=collator)
    projected.clear()
    trainer.compute_loss(model, dict(batch))
    assert projected == [batch["labels"].numel()]


def test_a_files_digest_is_read_once_while_the_file_stays_as_it_was(tmp_path):
    """A resume checks the training file's SHA-256 and records it: a large corpus is read once, a changed one again."""
    corpus = tmp_path / "train.jsonl"
    corpus.write_bytes(b"one\n" * 1000)
    reads = vanilla_files.file_sha256.cache_info().misses
    assert (
        vanilla_files.sha256_of(corpus)
        == vanilla_files.sha256_of(corpus)
        == hashlib.sha256(corpus.read_bytes()).hexdigest()
    )
    assert vanilla_files.file_sha256.cache_info().misses == reads + 1
    modified = corpus.stat().st_mtime_ns + 1_000_000_000
    corpus.write_bytes(b"two\n" * 1000)  # the same size, a second later
    os.utime(corpus, ns=(modified, modified))
    assert vanilla_files.sha256_of(corpus) == hashlib.sha256(b"two\n" * 1000).hexdigest()


def test_loading_a_checkpoint_warns_of_missing_weights_but_not_of_the_tied_embeddings(tmp_path, monkeypatch):
    """Trainer loads a checkpoint (resuming, or the best model at the end) with load_state_dict(strict=False) and warns
    of every key missing from it: the tied embeddings, saved once as `shared`, were named as missing on each resume."""
    import safetensors.torch
    import transformers.trainer

    tokenizer, _ = number_rows(range(1, 3))
    model = one_layer_model(tokenizer)
    checkpoint = tmp_path / "checkpoint-1"
    model.save_pretrained(checkpoint)
    args = Seq2SeqTrainingArguments(tmp_path / "run", report_to=[], use_cpu=True)
    trainer = VanillaTrainer(model=one_layer_model(tokenizer), args=args, processing_class=tokenizer)
    warnings = []
    monkeypatch.setattr(transformers.trainer.logger, "warning", lambda message, *args: warnings.append(message))
    trainer._load_from_checkpoint(str(checkpoint))
    assert warnings == []
    torch.testing.assert_close(trainer.model.lm_head.weight, model.model.shared.weight)
    assert trainer.model.lm_head.weight is trainer.model.model.decoder.embed_tokens.weight

    weights = safetensors.torch.load_file(checkpoint / "model.safetensors")
    del weights["model.encoder.layers.0.self_attn_sublayer.norm.weight"]
    safetensors.torch.save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    trainer._load_from_checkpoint(str(checkpoint))
    missing = "['model.encoder.layers.0.self_attn_sublayer.norm.weight']"
    assert warnings == [f"There were missing keys in the checkpoint model loaded: {missing}."]


def test_training_counts_the_floating_point_operations_as_trainer_does_counting_the_parameters_once(tmp_path):
    tokenizer, rows = number_rows(range(1, 13))
    model = one_layer_model(tokenizer)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model)
    args = Seq2SeqTrainingArguments(
        tmp_path,
        per_device_train_batch_size=4,
        num_train_epochs=1,
        train_sampling_strategy="sequential",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
    )
    trainer = VanillaTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        data_collator=collator,
    )
    counts = []
    count = model.num_parameters
    model.num_parameters = lambda **kwargs: counts.append(kwargs) or count(**kwargs)
    trainer.train()
    assert trainer.state.global_step == 3 and counts == [{"exclude_embeddings": True}]
    # Trainer's estimate: 6 x the source tokens of each batch x the parameters outside the embeddings.
    source_tokens = sum(collator(rows[start : start + 4])["input_ids"].numel() for start in range(0, 12, 4))
    assert trainer.state.total_flos == 6 * source_tokens * count(exclude_embeddings=True)
