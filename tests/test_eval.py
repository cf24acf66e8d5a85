"""eval.py end to end on a tiny model trained for a few steps by train.py; metrics against sacrebleu itself."""

import copy
import errno
import functools
import gc
import gzip
import hashlib
import io
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import unicodedata
from pathlib import Path

import evaluate
import pytest
import sacrebleu
import torch
from datasets import Dataset
from harness import ROOT, environment, run_cli
from hub_standin import REVISION, cache_revision
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from tiny_models import tiny_config
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

import vanilla_averaging
import vanilla_ctranslate2
import vanilla_translation
from modeling_vanilla import VanillaConfig, VanillaForConditionalGeneration
from vanilla_cli import UsageError
from vanilla_corpus import DataArguments
from vanilla_ctranslate2 import source_fingerprint
from vanilla_files import LockHeld, check_output_files, lock_file, unlock_file, write_folder_atomically
from vanilla_metrics import load_metrics, score
from vanilla_translation import COMPILED_DECODING, compile_for_decoding

# Sources of different lengths, so that sorting by length reorders them; references are their German words.
PAIRS = [
    ("seven", "sieben"),
    ("three hundred and forty-five", "dreihundertfünfundvierzig"),
    ("twelve", "zwölf"),
    ("nine hundred and ninety-nine", "neunhundertneunundneunzig"),
    ("forty", "vierzig"),
    ("one hundred and one", "hunderteins"),
]
OFFSET = 3  # --max_length_offset: short outputs keep the tests fast


@pytest.fixture(scope="module")
def test_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "test.jsonl"
    path.write_text("".join(json.dumps({"translation": {"en": en, "de": de}}) + "\n" for en, de in PAIRS))
    return path


@functools.cache
def load(model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    return AutoModelForSeq2SeqLM.from_pretrained(model_dir, trust_remote_code=True).eval(), tokenizer


def one_by_one(model_dir: Path, sources: list[str], max_new_tokens: int) -> list[str]:
    """The reference: each sentence translated alone (no padding, no sorting) with the paper's beam settings."""
    model, tokenizer = load(model_dir)
    translations = []
    for source in sources:
        input_ids = torch.tensor([tokenizer(source)["input_ids"]])
        with torch.no_grad():
            output = model.generate(input_ids=input_ids, num_beams=4, length_penalty=0.6, max_new_tokens=max_new_tokens)
        translations.append(tokenizer.decode(output[0], skip_special_tokens=True))
    return translations


def longest_source(model_dir: Path, sources: list[str]) -> int:
    _, tokenizer = load(model_dir)
    return max(len(tokenizer(source)["input_ids"]) for source in sources)


def assert_usage_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.slow
def test_a_model_whose_weights_hold_nan_is_translated_with_a_warning(trained_run, tmp_path):
    model = model_copy(trained_run, tmp_path / "model")
    weights = load_file(model / "model.safetensors")
    name = sorted(weights)[0]
    weights[name][0] = float("nan")  # as a diverged training leaves them, in one row of one tensor
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    result = run_cli("eval.py", "translate", "--model", str(model), "--max_length_offset", "1", stdin="seven\n")
    assert result.returncode == 0, result.stderr[-3000:]
    tensors = len(list(load(trained_run)[0].parameters()))
    assert f"warning: 1 of the {tensors} weight tensors of {model} hold NaN or inf ({name}, ...)" in result.stderr
    clean = run_cli("eval.py", "translate", "--model", str(trained_run), "--max_length_offset", "1", stdin="seven\n")
    assert clean.returncode == 0 and "hold NaN or inf" not in clean.stderr


@pytest.mark.slow
def test_sources_with_characters_the_vocabulary_lacks_are_counted_in_a_warning(trained_run, tmp_path):
    sources = ["seven", "семь", "twelve"]  # the embedded task's vocabulary holds no Cyrillic letter
    vocabulary = "".join(AutoTokenizer.from_pretrained(trained_run).get_vocab())
    lacking = sum(any(character not in vocabulary for character in source) for source in sources)
    test_file = tmp_path / "test.jsonl"
    test_file.write_text("".join(json.dumps({"translation": {"en": en, "de": "sieben"}}) + "\n" for en in sources))
    result = run_cli(
        "eval.py",
        *("--model", str(trained_run), "--test_file", str(test_file), "--max_length_offset", str(OFFSET)),
        *("--predictions_file", str(tmp_path / "hypotheses.txt"), "--results_file", str(tmp_path / "report.json")),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert lacking == 1
    assert f"warning: {lacking} of 3 sources hold characters that the model's vocabulary lacks" in result.stderr


@pytest.mark.slow
def test_references_the_tokenizer_normalizes_are_counted_and_noted(trained_run, tmp_path):
    # A decomposed "ü" (u + combining diaeresis) and a full-width "！": NFKC composes and narrows them in training, so
    # the model never writes them; an NFC sentence stays as it is.
    pairs = [("five", unicodedata.normalize("NFD", "fünf")), ("seven", "sieben！"), ("twelve", "zwölf")]
    test_file = tmp_path / "test.jsonl"
    test_file.write_text("".join(json.dumps({"translation": {"en": en, "de": de}}) + "\n" for en, de in pairs))
    results_file = tmp_path / "report.json"
    result = run_cli(
        "eval.py",
        *("--model", str(trained_run), "--test_file", str(test_file), "--max_length_offset", str(OFFSET)),
        *("--predictions_file", str(tmp_path / "hypotheses.txt"), "--results_file", str(results_file)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    changed = sum(unicodedata.normalize("NFKC", de) != de for _, de in pairs)
    assert changed == 2 and json.loads(results_file.read_text())["references_normalized"] == changed
    assert f"note      {changed} of 3 references change under the tokenizer's normalizer" in result.stdout


@pytest.mark.slow
def test_evaluation_writes_the_report_and_hypotheses_in_input_order(trained_run, test_file, tmp_path):
    predictions_file, results_file = tmp_path / "hypotheses.txt", tmp_path / "report.json"
    result = run_cli(
        "eval.py",
        *("--model", str(trained_run), "--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de"),
        *("--max_length_offset", str(OFFSET), "--predictions_file", str(predictions_file)),
        *("--results_file", str(results_file)),
    )
    assert result.returncode == 0, result.stderr[-3000:]

    sources = [en for en, _ in PAIRS]
    references = [de for _, de in PAIRS]
    hypotheses = predictions_file.read_text(encoding="utf-8").split("\n")
    assert hypotheses[-1] == ""  # every line ends with a newline
    hypotheses = hypotheses[:-1]
    # One batch: its output limit is the longest source + offset, whatever the sentence.
    expected = one_by_one(trained_run, sources, longest_source(trained_run, sources) + OFFSET)
    assert hypotheses == expected
    assert len(set(hypotheses)) > 1, "the model should translate different sources differently"

    report = json.loads(results_file.read_text())
    assert set(report) == {
        "model",
        "averaged_from",
        "data",
        "dataset_config",
        "split",
        "source_lang",
        "target_lang",
        "num_sentences",
        "references_normalized",
        "bleu",
        "chrf",
        "sacrebleu_signature",
        "chrf_signature",
        "bleu_details",
        "metrics",
        "decoding",
        "engine",
        "quantization",
        "dtype",
        "device",
        "wall_time_s",
        "sentences_per_second",
        "predictions_file",
    }
    assert report["num_sentences"] == len(PAIRS) and report["averaged_from"] is None  # not an averaged model
    assert report["references_normalized"] == 0  # NFC German: as NFKC leaves it
    assert report["metrics"] == "local"
    assert report["decoding"]["num_beams"] == 4
    assert report["decoding"]["length_penalty"] == 0.6
    assert report["decoding"]["max_length_offset"] == OFFSET
    assert (report["engine"], report["quantization"], report["dtype"]) == ("transformers", None, "float32")
    bleu = sacrebleu.metrics.BLEU()
    assert report["bleu"] == pytest.approx(bleu.corpus_score(hypotheses, [references]).score)
    assert report["sacrebleu_signature"] == str(bleu.get_signature())
    assert report["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score)
    assert report["wall_time_s"] > 0
    assert report["sentences_per_second"] == pytest.approx(len(PAIRS) / report["wall_time_s"])
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp" in result.stdout


@pytest.mark.slow
def test_an_output_named_dash_is_stdout_and_the_scores_go_to_stderr(trained_run, test_file, tmp_path):
    """`--predictions_file -` (or `--results_file -`) writes to stdout, as sacreBLEU and most tools read `-`: the
    hypotheses (or the JSON report) alone, so stdout pipes on; the scores table goes to stderr; no file named `-`.
    /dev/stdout is stdout too."""
    data = ("--model", str(trained_run), "--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de")
    data += ("--max_length_offset", str(OFFSET))
    report_file, hypotheses_file = tmp_path / "report.json", tmp_path / "hypotheses.txt"
    to_stdout = run_cli("eval.py", *data, "--predictions_file", "-", "--results_file", str(report_file), cwd=tmp_path)
    assert to_stdout.returncode == 0, to_stdout.stderr[-3000:]
    to_file = run_cli("eval.py", *data, "--predictions_file", str(hypotheses_file), "--results_file", "-", cwd=tmp_path)
    assert to_file.returncode == 0, to_file.stderr[-3000:]

    assert to_stdout.stdout == hypotheses_file.read_text(encoding="utf-8")
    assert len(to_stdout.stdout.splitlines()) == len(PAIRS)
    report = json.loads(report_file.read_text())
    assert report["predictions_file"] == "<stdout>"
    printed = json.loads(to_file.stdout)  # the report alone on stdout
    assert printed["predictions_file"] == str(hypotheses_file) and printed["bleu"] == report["bleu"]
    assert f"written   <stdout>, {report_file}" in to_stdout.stderr
    assert f"written   {hypotheses_file}, <stdout>" in to_file.stderr
    assert "BLEU" not in to_stdout.stdout and "tok:13a" in to_file.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hypotheses.txt", "report.json"]
    by_path = run_cli("eval.py", *data, "--predictions_file", "/dev/stdout", "--results_file", str(report_file))
    assert by_path.returncode == 0, by_path.stderr[-3000:]
    assert by_path.stdout == to_stdout.stdout and "written   /dev/stdout" in by_path.stderr

    both = run_cli("eval.py", *data, "--predictions_file", "-", "--results_file", "-", cwd=tmp_path)
    assert_usage_error(both, "--predictions_file and --results_file are both - (stdout)")


@pytest.mark.parametrize(
    "references",
    [
        ["the cat sat on a mat .", "hello world , again", "a b c d e f"],
        [["the cat sat on a mat .", "a cat sat on the mat ."], ["hello world", "hi world , again"], ["a b c", "f e"]],
    ],
    ids=["one-reference", "two-references"],
)
def test_offline_metrics_equal_sacrebleu(references):
    predictions = ["the cat sat on the mat .", "hello there world , again", "a b c d e"]
    streams = [references] if isinstance(references[0], str) else [list(refs) for refs in zip(*references, strict=True)]
    bleu = evaluate.load(str(ROOT / "vanilla_metrics" / "sacrebleu")).compute(
        predictions=predictions, references=references
    )
    chrf = evaluate.load(str(ROOT / "vanilla_metrics" / "chrf")).compute(predictions=predictions, references=references)
    expected_bleu = sacrebleu.corpus_bleu(predictions, streams)
    assert bleu["score"] > 0
    assert bleu["score"] == pytest.approx(expected_bleu.score)
    assert bleu["counts"] == expected_bleu.counts
    assert chrf["score"] == pytest.approx(sacrebleu.corpus_chrf(predictions, streams).score)
    assert bleu["signature"].startswith(f"nrefs:{len(streams)}|")


def test_bleu_tokenizes_the_target_language_as_sacrebleu_picks_it():
    """13a reads an unspaced Chinese sentence as one word: a Chinese target is scored with sacreBLEU's zh tokenizer,
    whatever form its code takes; other languages keep 13a, and a tokenizer named explicitly wins."""
    predictions, references = ["我爱北京天安门", "今天天气很好"], ["我爱北京的天安门", "今天天气不错"]

    def bleu(**kwargs) -> dict:
        return score(load_metrics(**kwargs), predictions, references)["sacrebleu"]

    chinese = sacrebleu.corpus_bleu(predictions, [references], tokenize="zh").score
    assert chinese != pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score)
    for code in ("zh", "zh-CN", "zho_Hans"):
        assert bleu(target_lang=code)["score"] == pytest.approx(chinese)
        assert "|tok:zh|" in bleu(target_lang=code)["signature"]
    assert bleu(target_lang="de")["score"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score)
    assert "|tok:13a|" in bleu(target_lang="de")["signature"]
    explicit = bleu(target_lang="zh", bleu_tokenize="char")
    assert explicit["score"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references], tokenize="char").score)
    assert "|tok:char|" in explicit["signature"]


@pytest.mark.slow
def test_eval_py_scores_a_chinese_target_with_the_chinese_tokenizer_and_names_a_missing_one(trained_run, tmp_path):
    """The report's signature names the tokenizer chosen for --target_lang; Japanese needs MeCab (sacrebleu[ja]):
    without it, one error line before anything is translated."""
    data = {language: tmp_path / f"test_{language}.jsonl" for language in ("zh", "ja")}
    for language, path in data.items():
        pairs = [{"en": "seven", language: "七"}, {"en": "twelve", language: "十二"}]
        path.write_text("".join(json.dumps({"translation": pair}) + "\n" for pair in pairs))
    flags = ("--model", str(trained_run), "--source_lang", "en", "--max_length_offset", str(OFFSET))
    results = tmp_path / "report.json"
    outputs = ("--results_file", str(results), "--predictions_file", str(tmp_path / "hypotheses.txt"))
    result = run_cli("eval.py", *flags, "--test_file", str(data["zh"]), "--target_lang", "zh", *outputs)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "|tok:zh|" in json.loads(results.read_text())["sacrebleu_signature"]
    no_mecab = tmp_path / "no_mecab"
    (no_mecab / "MeCab").mkdir(parents=True)
    (no_mecab / "MeCab" / "__init__.py").write_text("raise ImportError('No module named MeCab')\n")
    env = environment(PYTHONPATH=f"{no_mecab}{os.pathsep}{ROOT}")
    outputs = ("--results_file", str(tmp_path / "ja.json"), "--predictions_file", str(tmp_path / "ja.txt"))
    result = run_cli("eval.py", *flags, "--test_file", str(data["ja"]), "--target_lang", "ja", *outputs, env=env)
    assert_usage_error(result, "target language 'ja' with 'ja-mecab'", 'pip install "sacrebleu[ja]"', "--bleu_tokenize")
    assert not (tmp_path / "ja.json").exists() and not (tmp_path / "ja.txt").exists()


@pytest.mark.slow
def test_averaging_identical_checkpoints_gives_the_checkpoint(trained_run, tmp_path):
    from vanilla_averaging import average_checkpoints

    run = tmp_path / "run"
    for step in (10, 20, 30):
        shutil.copytree(trained_run / "checkpoint-2", run / f"checkpoint-{step}")
    with average_checkpoints(run, 3, tmp_path / "averaged") as averaged:
        pass
    original = load_file(trained_run / "checkpoint-2" / "model.safetensors")
    result = load_file(averaged / "model.safetensors")
    assert set(result) == set(original)
    for name, tensor in original.items():
        torch.testing.assert_close(result[name], tensor, rtol=0, atol=1e-7, msg=name)


@pytest.mark.slow
def test_average_last_two_checkpoints_is_their_mean_and_is_evaluated(trained_run, test_file, tmp_path):
    averaged = tmp_path / "averaged"
    result = run_cli(
        "eval.py",
        *("--model", str(trained_run), "--average_last", "2", "--averaged_model_dir", str(averaged)),
        *("--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de", "--max_length_offset", "1"),
        *("--results_file", str(tmp_path / "report.json"), "--predictions_file", str(tmp_path / "hypotheses.txt")),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first = load_file(trained_run / "checkpoint-2" / "model.safetensors")
    second = load_file(trained_run / "checkpoint-4" / "model.safetensors")
    mean = load_file(averaged / "model.safetensors")
    assert set(mean) == set(first)
    assert any(not torch.equal(first[name], second[name]) for name in first)
    for name in first:
        torch.testing.assert_close(mean[name], (first[name] + second[name]) / 2, msg=name)
    assert json.loads((tmp_path / "report.json").read_text())["model"] == str(averaged)
    # The averaged folder is a whole model: it loads on its own, tokenizer included.
    AutoTokenizer.from_pretrained(averaged, trust_remote_code=True)
    AutoModelForSeq2SeqLM.from_pretrained(averaged, trust_remote_code=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sentence", ["three hundred and forty-five", "pay $5 for the #1 $hit"], ids=["plain", "dollar-signs"]
)
def test_attention_plot_is_a_png(trained_run, tmp_path, sentence):
    """Also for text that matplotlib would take for TeX math (between two "$")."""
    plot = tmp_path / "attention.png"
    result = run_cli(
        "eval.py",
        *("--model", str(trained_run), "--plot_attention", sentence),
        *("--attention_file", str(plot), "--max_length_offset", str(OFFSET)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 200 and height >= 200
    assert len(data) > 5000


@pytest.mark.slow
@pytest.mark.parametrize(
    "lines",
    [["seven", "", "three hundred and forty-five", "twelve"], ["seven\u2028eight", "three\x0cfour\x85five", "twelve"]],
    ids=["an-empty-line", "line-separators-inside-sentences"],
)
def test_translate_mode_reads_stdin_and_writes_stdout_line_by_line(trained_run, lines):
    """One translation a line of stdin, in step with it: an empty line stays empty, and a line ends at a newline
    ("\n" or "\r\n") only: U+2028, U+0085 and a form feed stay inside their sentence."""
    sources = [line for line in lines if line]
    result = run_cli(
        "eval.py",
        *("translate", "--model", str(trained_run), "--max_length_offset", str(OFFSET)),
        stdin=lines[0] + "\r\n" + "\n".join(lines[1:]) + "\n",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = iter(one_by_one(trained_run, sources, longest_source(trained_run, sources) + OFFSET))
    assert result.stdout.split("\n") == [next(expected) if line else "" for line in lines] + [""]


@pytest.mark.slow
@pytest.mark.parametrize("num_beams", ["1", "4"], ids=["greedy", "beam"])
def test_translate_mode_passes_generate_only_the_settings_of_its_search(trained_run, num_beams):
    """Greedy search has no length penalty to apply: passed one, generate() warns that it ignores it."""
    result = run_cli(
        "eval.py", "translate", "--model", str(trained_run), "--num_beams", num_beams, stdin="seven\ntwelve\n"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.splitlines()) == 2
    assert "generation flags" not in result.stderr and "[transformers]" not in result.stderr, result.stderr


@pytest.mark.slow
def test_help_states_each_default_once_and_the_source_length_eval_py_takes():
    """A flag whose help says its default gets no argparse `(default: None)` after it, and --max_source_length's
    help gives eval.py's default (the recorded training length) beside the dataclass' 256, not only the 256."""
    result = run_cli("eval.py", "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    text = " ".join(result.stdout.split())

    def help_of(flag: str, next_flag: str) -> str:
        return re.search(rf" --{flag} \S+, --\S+ \S+ (.*?) --{next_flag} ", text).group(1)

    assert (
        help_of("num_beams", "length_penalty")
        == "Beam size (default: generation_config's; train.py saves 4, sec. 6.1)."
    )
    assert help_of("max_source_length", "max_target_length") == (
        f"Source sentences are truncated to this many tokens (default: {DataArguments().max_source_length}; eval.py's "
        "default: the length the model was trained on, from its data_args.json)."
    )
    assert help_of("batch_size", "predictions_file") == "Sentences per generate() call. (default: 64)"


@pytest.mark.slow
def test_a_word_that_is_no_argument_is_named_with_what_eval_py_takes(trained_run):
    result = run_cli("eval.py", "translate", "--model", str(trained_run), "extra", stdin="seven\n")
    expected = "unexpected argument extra: expected --flag value pairs and at most one mode (evaluate, translate)"
    assert_usage_error(result, expected)
    # A flag whose value may be left out would take the mode after it as its value.
    result = run_cli("eval.py", "--model", str(trained_run), "--compile", "translate", stdin="seven\n")
    assert_usage_error(result, "--compile translate: --compile would take the mode as its value; put the mode first")
    result = run_cli("eval.py", "--model", str(trained_run), "--num_beams", "1", "translate", stdin="seven\n")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1, result.stderr[-3000:]


@pytest.mark.slow
def test_missing_model_path_is_a_usage_error(tmp_path):
    assert_usage_error(run_cli("eval.py", "--model", str(tmp_path / "no-such-model")), "no-such-model")


@pytest.mark.slow
def test_a_bare_name_that_is_no_folder_says_so_before_asking_for_data(tmp_path):
    """A bare name may be a Hub id or a mistyped folder: with no data flags, the error says both."""
    result = run_cli("eval.py", "--model", "no-such-model", cwd=tmp_path)
    assert_usage_error(result, "no-such-model: no such model folder here, and a Hub model holds no data_args.json")


@pytest.mark.slow
def test_folder_without_a_model_is_a_usage_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    assert_usage_error(run_cli("eval.py", "--model", str(tmp_path)), str(tmp_path), "not a model folder")


@pytest.mark.slow
def test_a_run_folder_without_its_final_model_names_its_newest_checkpoint(trained_run, tmp_path):
    run = tmp_path / "run"
    for checkpoint in ("checkpoint-2", "checkpoint-4"):
        shutil.copytree(trained_run / checkpoint, run / checkpoint)
    result = run_cli("eval.py", "--model", str(run))
    assert_usage_error(
        result, f"it holds a run's checkpoints: pass --model {run / 'checkpoint-4'}, or --average_last N"
    )


@pytest.mark.slow
def test_a_run_folder_without_its_final_model_names_its_newest_complete_checkpoint(trained_run, tmp_path):
    """A checkpoint the run was killed saving (no trainer state, its weights cut short) does not load: the command
    suggested names the newest one that does."""
    run = tmp_path / "run"
    for checkpoint in ("checkpoint-2", "checkpoint-4"):
        shutil.copytree(trained_run / checkpoint, run / checkpoint)
    (run / "checkpoint-4" / "trainer_state.json").unlink()
    os.truncate(run / "checkpoint-4" / "model.safetensors", 1000)
    result = run_cli("eval.py", "--model", str(run))
    assert_usage_error(result, f"pass --model {run / 'checkpoint-2'}, or --average_last N")
    translated = run_cli("eval.py", "translate", "--model", str(run / "checkpoint-2"), stdin="seven\n")
    assert translated.returncode == 0 and translated.stdout.strip(), translated.stderr[-3000:]


@pytest.mark.slow
def test_model_without_a_tokenizer_is_a_usage_error(trained_run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained_run, model, ignore=shutil.ignore_patterns("tokenizer*", "checkpoint-*"))
    assert_usage_error(run_cli("eval.py", "--model", str(model)), str(model), "no tokenizer")


@pytest.mark.slow
def test_test_file_without_the_languages_is_a_usage_error(trained_run, tmp_path):
    french = tmp_path / "test.jsonl"
    french.write_text(json.dumps({"translation": {"en": "seven", "fr": "sept"}}) + "\n")
    result = run_cli(
        "eval.py",
        *("--model", str(trained_run), "--test_file", str(french), "--source_lang", "en", "--target_lang", "de"),
    )
    assert_usage_error(result, str(french), "'de'")


@pytest.mark.slow
def test_a_dataset_configuration_without_a_dataset_is_a_usage_error(trained_run, tmp_path):
    """--dataset_config_name with a test file was ignored, yet recorded in the report as the data's configuration."""
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"translation": {"en": "seven", "de": "sieben"}}) + "\n")
    flags = ("--test_file", str(test), "--source_lang", "en", "--target_lang", "de", "--dataset_config_name", "de-en")
    result = run_cli("eval.py", "--model", str(trained_run), *flags)
    assert_usage_error(result, "--dataset_config_name 'de-en'", "names a configuration of --dataset_name")


@pytest.mark.slow
def test_empty_test_set_is_a_usage_error(trained_run, tmp_path):
    empty = tmp_path / "test.jsonl"
    empty.write_text("")
    result = run_cli(
        "eval.py",
        *("--model", str(trained_run), "--test_file", str(empty), "--source_lang", "en", "--target_lang", "de"),
    )
    assert_usage_error(result, str(empty), "empty")


def model_copy(run: Path, destination: Path, record: dict | None = None) -> Path:
    """The trained model without its checkpoints and data record; `record` (if given) as its data_args.json."""
    shutil.copytree(run, destination, ignore=shutil.ignore_patterns("checkpoint-*", "averaged-*", "data_args.json"))
    if record is not None:
        (destination / "data_args.json").write_text(json.dumps(record))
    return destination


def data_record(**values) -> dict:
    """A data_args.json as train.py writes it: the embedded task unless files or a dataset are named."""
    record = dict.fromkeys(("dataset_name", "dataset_config_name", "train_file", "validation_file", "test_file"))
    record.update(source_lang="en", target_lang="de", max_source_length=256, max_target_length=256)
    record.update(values)
    record["embedded_task"] = not any(record[name] for name in ("dataset_name", "train_file", "test_file"))
    return record


def tree(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("target", ["the-run-itself", "a-data-folder", "default-averaged-folder"])
def test_averaged_model_dir_holding_anything_else_is_refused_and_kept(trained_run, test_file, tmp_path, target):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    if target == "the-run-itself":
        folder, flags = run, ("--averaged_model_dir", str(run))
    elif target == "a-data-folder":
        folder = tmp_path / "data"
        folder.mkdir()
        shutil.copy(test_file, folder / "test.jsonl")
        flags = ("--averaged_model_dir", str(folder))
    else:
        folder, flags = run / "averaged-last-2", ()
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
    before = tree(folder)
    result = run_cli(
        "eval.py",
        *("--model", str(run), "--average_last", "2", *flags),
        *("--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de"),
    )
    named = "--averaged_model_dir" if flags else "the averaged folder"  # no flag given: none named as typed
    assert_usage_error(result, f"error: {named} {folder} ", "averaged_from.json")
    assert tree(folder) == before


@pytest.mark.slow
@pytest.mark.parametrize("run_record", ["none", "an-older-models"])
def test_averaging_a_run_before_its_final_save_scores_the_data_of_its_checkpoints(
    trained_run, test_file, tmp_path, run_record
):
    """A run killed before its final save has no data_args.json of its own, and one that overwrites a finished model
    keeps the old model's until its end: its checkpoints' record is the run's data."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("averaged-*"))
    recorded = data_record(test_file=str(test_file))
    for checkpoint in ("checkpoint-2", "checkpoint-4"):
        (run / checkpoint / "data_args.json").write_text(json.dumps(recorded))
    if run_record == "none":
        (run / "data_args.json").unlink()
    else:
        (run / "data_args.json").write_text(json.dumps(data_record(train_file="/elsewhere/train.jsonl")))
    averaged = tmp_path / "averaged"
    flags = ("--model", str(run), "--average_last", "2", "--averaged_model_dir", str(averaged), "--num_beams", "1")
    result = run_cli("eval.py", *flags, "--max_length_offset", str(OFFSET))  # no data flags
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((averaged / "data_args.json").read_text()) == recorded
    assert json.loads((averaged / "eval_results_test.json").read_text())["data"] == str(test_file)


@pytest.mark.slow
def test_averaging_again_replaces_the_earlier_averaged_model_and_records_its_sources(trained_run, test_file, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("data_args.json"))
    record = data_record(test_file=str(test_file))
    (run / "data_args.json").write_text(json.dumps(record))
    averaged = tmp_path / "averaged"
    flags = ("--model", str(run), "--averaged_model_dir", str(averaged), "--max_length_offset", "1")
    result = run_cli("eval.py", "translate", *flags, "--average_last", "1", stdin="")
    assert result.returncode == 0, result.stderr[-3000:]
    # A CTranslate2 conversion killed inside the averaged folder left its temporary folder: no reason to refuse.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (averaged / f".ctranslate2-float32.{socket.gethostname()}.{int(gone.stdout)}.tmp").mkdir()
    result = run_cli("eval.py", *flags, "--average_last", "2")  # no data flags: the run's recorded test file
    assert result.returncode == 0, result.stderr[-3000:]
    marker = json.loads((averaged / "averaged_from.json").read_text())
    digests = {
        step: {"model.safetensors": hashlib.sha256((run / step / "model.safetensors").read_bytes()).hexdigest()}
        for step in ("checkpoint-2", "checkpoint-4")
    }
    assert marker == {"run": str(run.resolve()), "checkpoints": ["checkpoint-2", "checkpoint-4"], "sha256": digests}
    assert json.loads((averaged / "data_args.json").read_text()) == record
    first = load_file(run / "checkpoint-2" / "model.safetensors")
    second = load_file(run / "checkpoint-4" / "model.safetensors")
    mean = load_file(averaged / "model.safetensors")
    for name in first:
        torch.testing.assert_close(mean[name], (first[name] + second[name]) / 2, msg=name)
    report = json.loads((averaged / "eval_results_test.json").read_text())
    assert (report["data"], report["num_sentences"]) == (str(test_file), len(PAIRS))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["averaged", "run"]  # no temporary folder left
    assert not [path.name for path in averaged.iterdir() if path.name.startswith(".")]


@pytest.mark.slow
def test_a_damaged_averaging_marker_is_named_and_averaging_again_rewrites_it(trained_run, test_file, tmp_path):
    """averaged_from.json cut short (or edited): scoring the folder names it, and averaging again redoes the average
    rather than failing on it; a damaged CTranslate2 source.json is converted again."""
    averaged = tmp_path / "averaged"
    flags = ("--model", str(trained_run), "--averaged_model_dir", str(averaged), "--average_last", "2")
    data = ("--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de", "--max_length_offset", "1")
    result = run_cli("eval.py", *flags, *data, "--engine", "ctranslate2")
    assert result.returncode == 0, result.stderr[-3000:]
    marker, source = averaged / "averaged_from.json", averaged / "ctranslate2-float32" / "source.json"
    written, converted = marker.read_text(), source.read_text()
    marker.write_text(written[:20])
    source.write_text(converted[:20])
    result = run_cli("eval.py", "--model", str(averaged), *data)
    assert_usage_error(result, f"{marker}: damaged (not a JSON object); average the checkpoints again to rewrite it")
    result = run_cli("eval.py", *flags, *data, "--engine", "ctranslate2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (marker.read_text(), source.read_text()) == (written, converted)


@pytest.mark.slow
def test_averaging_again_through_ctranslate2_replaces_the_averaged_model_and_its_conversion(
    trained_run, test_file, tmp_path
):
    """The conversion --engine ctranslate2 caches in an averaged folder is eval.py's own: the same command again,
    here over other checkpoints, replaces the averaged model and converts the new one. A user's folder there is kept."""
    averaged = tmp_path / "averaged"
    for name in ("first", "second", "hf"):
        (tmp_path / name).mkdir()
    flags = ("--averaged_model_dir", str(averaged), "--engine", "ctranslate2")
    evaluate_with(trained_run, test_file, tmp_path / "first", "--average_last", "1", *flags)
    recorded = averaged / "ctranslate2-float32" / "source.json"
    first = json.loads(recorded.read_text())
    hypotheses, _ = evaluate_with(trained_run, test_file, tmp_path / "second", "--average_last", "2", *flags)
    converted = json.loads(recorded.read_text())
    fingerprint = {name: value for name, value in converted.items() if name != vanilla_ctranslate2.CONVERTED_DIGESTS}
    assert fingerprint == source_fingerprint(averaged) != first
    expected, _ = evaluate_with(averaged, test_file, tmp_path / "hf")  # the transformers engine on the new average
    assert hypotheses == expected

    (averaged / "ctranslate2-int8").mkdir()  # named like a conversion, but no source.json: not eval.py's
    before = tree(averaged)
    result = run_cli("eval.py", "--model", str(trained_run), "--average_last", "1", *flags)
    assert_usage_error(result, str(averaged), "ctranslate2-int8")
    assert tree(averaged) == before


@pytest.mark.slow
def test_no_data_flags_score_the_recorded_test_file_in_the_recorded_direction(trained_run, test_file, tmp_path):
    model = model_copy(
        trained_run, tmp_path / "model", data_record(test_file=str(test_file), source_lang="de", target_lang="en")
    )
    result = run_cli("eval.py", "--model", str(model), "--max_length_offset", str(OFFSET))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((model / "eval_results_test.json").read_text())
    assert (report["data"], report["source_lang"], report["target_lang"]) == (str(test_file), "de", "en")
    assert report["num_sentences"] == len(PAIRS) and report["averaged_from"] is None  # not an averaged model
    assert len((model / "predictions_test.txt").read_text().splitlines()) == len(PAIRS)


@pytest.mark.slow
def test_decoding_starts_from_the_saved_generation_config_and_given_flags_override_it(trained_run, test_file, tmp_path):
    model = model_copy(trained_run, tmp_path / "model", data_record(test_file=str(test_file)))
    config = json.loads((model / "generation_config.json").read_text())
    config.update(num_beams=2, length_penalty=1.0)
    (model / "generation_config.json").write_text(json.dumps(config))
    decoding = {}
    for name, flags in {"saved": [], "given": ["--num_beams", "3"]}.items():
        result = run_cli("eval.py", "--model", str(model), "--max_length_offset", str(OFFSET), *flags)
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads((model / "eval_results_test.json").read_text())
        decoding[name] = (report["decoding"]["num_beams"], report["decoding"]["length_penalty"])
    assert decoding == {"saved": (2, 1.0), "given": (3, 1.0)}


@pytest.mark.slow
def test_split_validation_scores_the_recorded_validation_file(trained_run, test_file, tmp_path):
    validation = tmp_path / "validation.jsonl"
    validation.write_text("".join(test_file.read_text().splitlines(keepends=True)[:3]))
    model = model_copy(
        trained_run, tmp_path / "model", data_record(train_file=str(test_file), validation_file=str(validation))
    )
    result = run_cli("eval.py", "--model", str(model), "--split", "validation", "--max_length_offset", str(OFFSET))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((model / "eval_results_validation.json").read_text())
    assert (report["data"], report["split"], report["num_sentences"]) == (str(validation), "validation", 3)


@pytest.mark.slow
def test_sources_cut_at_max_source_length_are_counted_in_a_warning(trained_run, test_file, tmp_path):
    _, tokenizer = load(trained_run)
    lengths = [len(tokenizer(source)["input_ids"]) for source, _ in PAIRS]
    limit = sorted(lengths)[len(lengths) // 2]
    cut = sum(length > limit for length in lengths)
    assert 0 < cut < len(PAIRS)
    outputs = ("--predictions_file", str(tmp_path / "hyp.txt"), "--results_file", str(tmp_path / "report.json"))
    evaluation = ("--model", str(trained_run), "--test_file", str(test_file), "--max_length_offset", str(OFFSET))
    for max_source_length, warned in ((limit, cut), (max(lengths), 0)):
        result = run_cli("eval.py", *evaluation, *outputs, "--max_source_length", str(max_source_length))
        assert result.returncode == 0, result.stderr[-3000:]
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        expected = f"warning: {cut} of {len(PAIRS)} sources are longer than {limit} tokens (--max_source_length)"
        assert [line.startswith(expected) for line in warnings] == [True] * bool(warned), result.stderr[-3000:]


def test_encode_cuts_only_the_long_sources_and_each_keeps_its_closing_eos(tmp_path, capsys):
    """Sources over the limit are encoded again at it (the tokenizer keeps </s> last); the others are encoded once."""
    from vanilla_tokenizer import train_bpe_tokenizer

    train_bpe_tokenizer([source for source, _ in PAIRS] * 5, vocab_size=120).save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    texts = [source for source, _ in PAIRS]
    lengths = [len(tokenizer(text)["input_ids"]) for text in texts]
    limit = sorted(lengths)[len(lengths) // 2]
    calls = []

    class Counting:
        """The tokenizer, each call's texts recorded."""

        unk_token_id, unk_token = tokenizer.unk_token_id, tokenizer.unk_token

        def __call__(self, batch, **kwargs):
            calls.append(list(batch))
            return tokenizer(batch, **kwargs)

    ids = vanilla_translation.encode(Counting(), texts, max_source_length=limit)
    assert ids == [tokenizer(text, truncation=True, max_length=limit)["input_ids"] for text in texts]
    assert all(row[-1] == tokenizer.eos_token_id and len(row) <= limit for row in ids)
    long = [text for text, length in zip(texts, lengths, strict=True) if length > limit]
    assert calls == [texts, long] and 0 < len(long) < len(texts)
    assert f"warning: {len(long)} of {len(texts)} sources are longer than {limit} tokens" in capsys.readouterr().err


@pytest.mark.slow
def test_a_test_file_alone_takes_the_recorded_languages(trained_run, test_file, tmp_path):
    model = model_copy(
        trained_run, tmp_path / "model", data_record(train_file="train.jsonl", source_lang="de", target_lang="en")
    )
    result = run_cli("eval.py", "--model", str(model), "--test_file", str(test_file), "--max_length_offset", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((model / "eval_results_test.json").read_text())
    assert (report["data"], report["source_lang"], report["target_lang"]) == (str(test_file), "de", "en")


@pytest.mark.slow
@pytest.mark.parametrize("own_record", [True, False], ids=["its-own-record", "an-older-checkpoint-without-one"])
def test_a_checkpoint_without_data_flags_scores_the_data_recorded_for_its_run(
    trained_run, test_file, tmp_path, own_record
):
    """A checkpoint holds its run's data_args.json (the folder above may hold an older model's, which a run with
    --overwrite_output_dir replaces only at its end); one written by an older train.py has none: its run's."""
    recorded = data_record(test_file=str(test_file), source_lang="de", target_lang="en")
    run = model_copy(trained_run, tmp_path / "run", data_record() if own_record else recorded)
    checkpoint = run / "checkpoint-2"
    shutil.copytree(trained_run / "checkpoint-2", checkpoint)
    if own_record:
        (checkpoint / "data_args.json").write_text(json.dumps(recorded))
    else:
        (checkpoint / "data_args.json").unlink()
    result = run_cli("eval.py", "--model", str(checkpoint), "--max_length_offset", str(OFFSET))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((checkpoint / "eval_results_test.json").read_text())
    assert (report["data"], report["source_lang"], report["target_lang"]) == (str(test_file), "de", "en")


@pytest.mark.slow
def test_the_recorded_embedded_task_is_scored_without_data_flags(trained_run, tmp_path):
    model = model_copy(trained_run, tmp_path / "model", data_record())
    result = run_cli("eval.py", "--model", str(model), "--max_length_offset", "1", "--num_beams", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((model / "eval_results_test.json").read_text())
    assert (report["data"], report["source_lang"], report["target_lang"]) == ("the embedded number task", "en", "de")
    assert report["num_sentences"] == 99


@pytest.mark.slow
@pytest.mark.parametrize("record", [None, "without-test-data"], ids=["no-record", "record-without-test-data"])
def test_unknown_test_data_is_refused_and_earlier_results_kept(trained_run, tmp_path, record):
    record = data_record(train_file="train.jsonl", source_lang="de", target_lang="en") if record else None
    model = model_copy(trained_run, tmp_path / "model", record)
    earlier = {"eval_results_test.json": '{"bleu": 30.0}\n', "predictions_test.txt": "a man\n"}
    for name, text in earlier.items():
        (model / name).write_text(text)
    result = run_cli("eval.py", "--model", str(model))
    assert_usage_error(result, str(model), "--test_file", "--source_lang")
    assert {name: (model / name).read_text() for name in earlier} == earlier


@pytest.mark.slow
def test_train_py_records_its_data_and_eval_py_scores_it_by_default(tmp_path):
    """End to end: train.py writes data_args.json (de -> en from files); eval.py with no data flags scores its test."""
    files = {}
    for split, pairs in (("train", PAIRS * 4), ("test", PAIRS[:4])):
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps({"translation": {"en": en, "de": de}}) + "\n" for en, de in pairs))
    model = tmp_path / "model"
    result = run_cli(
        "train.py",
        *("--train_file", str(files["train"]), "--test_file", str(files["test"]), "--source_lang", "de"),
        *("--target_lang", "en", "--preset", "tiny", "--vocab_size", "60", "--max_steps", "2", "--save_strategy", "no"),
        *("--output_dir", str(model), "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("eval.py", "--model", str(model), "--max_length_offset", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((model / "eval_results_test.json").read_text())
    assert (report["source_lang"], report["target_lang"], report["num_sentences"]) == ("de", "en", 4)
    assert Path(report["data"]).resolve() == files["test"].resolve()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_weights_are_a_usage_error(trained_run, tmp_path, damage):
    model = model_copy(trained_run, tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000] if damage == "truncated" else b"")
    result = run_cli("eval.py", "translate", "--model", str(model), stdin="seven\n")
    assert_usage_error(result, str(model), "deserializing")


@pytest.mark.slow
@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--num_beams", "0", "at least 1"),
        ("--batch_size", "0", "at least 1"),
        ("--max_length_offset", "-1000", "no room"),
        ("--length_penalty", "nan", "must be a finite number"),
        ("--length_penalty", "400", "must lie in [-100, 100]"),  # length ** 400 overflows a float
        ("--max_length_offset", "3000000000", "must be at most 10000"),
        ("--no_such_flag", "1", "unknown flag --no_such_flag"),
        ("--num_beams", "four", "invalid int value: 'four'"),  # argparse's error, without its usage text
    ],
)
def test_decoding_arguments_that_allow_no_output_are_usage_errors(
    trained_run, test_file, tmp_path, flag, value, expected
):
    results_file = tmp_path / "report.json"
    result = run_cli(
        "eval.py",
        *("--model", str(trained_run), "--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de"),
        *(flag, value, "--results_file", str(results_file), "--predictions_file", str(tmp_path / "hypotheses.txt")),
    )
    assert_usage_error(result, flag, expected)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "folder, message",
    [
        ("run/checkpoint-4", "--average_last 2: {folder} is a checkpoint, not a run: pass the run folder"),
        ("no-such-run", "--average_last 2: {folder}: no such run folder"),
        ("run-saving-no-checkpoints", "--average_last 2: {folder} has 0 complete checkpoint-* folders"),
    ],
    ids=["a-checkpoint", "missing", "a-run-without-checkpoints"],
)
def test_average_last_of_a_folder_that_is_no_run_is_a_usage_error(trained_run, tmp_path, folder, message):
    shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoint-2"))
    # A finished run trained with --save_strategy no: its trainer_state.json, no checkpoint.
    shutil.copytree(trained_run, tmp_path / "run-saving-no-checkpoints", ignore=shutil.ignore_patterns("checkpoint-*"))
    folder = tmp_path / folder
    before = tree(tmp_path)
    result = run_cli("eval.py", "--model", str(folder), "--average_last", "2")
    assert_usage_error(result, message.format(folder=folder))
    assert tree(tmp_path) == before


@pytest.mark.slow
@pytest.mark.parametrize("differ", ["tokenizer.json", "data_args.json"])
def test_averaging_checkpoints_of_two_runs_is_a_usage_error(trained_run, tmp_path, differ):
    """Same shapes, but another tokenizer (its ids mean other tokens) or other training data: not one run's."""
    run = tmp_path / "run"
    for step in (2, 4):
        shutil.copytree(trained_run / "checkpoint-2", run / f"checkpoint-{step}")
    changed = json.loads((run / "checkpoint-2" / differ).read_text())
    if differ == "tokenizer.json":
        vocab = changed["model"]["vocab"]
        first, second = list(vocab)[10:12]
        vocab[first], vocab[second] = vocab[second], vocab[first]
    else:
        changed["source_lang"], changed["target_lang"] = changed["target_lang"], changed["source_lang"]
    (run / "checkpoint-2" / differ).write_text(json.dumps(changed))
    result = run_cli("eval.py", "translate", "--model", str(run), "--average_last", "2", stdin="seven\n")
    assert_usage_error(result, "cannot average", "checkpoint-2", "checkpoint-4", "differ")
    assert not (run / "averaged-last-2").exists()


@pytest.mark.slow
def test_a_run_renamed_after_averaging_keeps_its_average_and_reports(trained_run, tmp_path):
    """The same checkpoints, their run folder renamed since: the average is kept (not made again, the reports of
    other splits staying), and its averaged_from.json and new report name the run where it now is."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    first = run_cli("eval.py", "--model", str(run), "--average_last", "2", "--split", "validation")
    assert first.returncode == 0, first.stderr[-3000:]
    renamed = tmp_path / "renamed run"
    run.rename(renamed)
    averaged = renamed / "averaged-last-2"
    weights = (averaged / "model.safetensors").stat().st_ino
    result = run_cli("eval.py", "--model", str(renamed), "--average_last", "2", "--split", "test")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "holds the average of these checkpoints already: kept, with its reports" in result.stderr
    assert (averaged / "model.safetensors").stat().st_ino == weights
    assert (averaged / "eval_results_validation.json").is_file()
    assert json.loads((averaged / "averaged_from.json").read_text())["run"] == str(renamed.resolve())
    assert json.loads((averaged / "eval_results_test.json").read_text())["averaged_from"]["run"] == str(
        renamed.resolve()
    )


@pytest.mark.slow
def test_averaging_the_same_checkpoints_again_keeps_the_averaged_model_and_its_reports(
    trained_run, test_file, tmp_path
):
    """Scoring an average on one split, then on another, keeps both reports; new weights make a new average."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    averaged = run / "averaged-last-2"
    for split in ("validation", "test"):
        result = run_cli("eval.py", "--model", str(run), "--average_last", "2", "--split", split)
        assert result.returncode == 0, result.stderr[-3000:]
    assert "holds the average of these checkpoints already: kept, with its reports" in result.stderr
    reports = {"eval_results_validation.json", "eval_results_test.json", "predictions_validation.txt"}
    assert reports <= {path.name for path in averaged.iterdir()}
    report = json.loads((averaged / "eval_results_test.json").read_text())
    assert report["averaged_from"]["checkpoints"] == ["checkpoint-2", "checkpoint-4"]
    assert report["averaged_from"]["run"] == str(run.resolve()) and set(report["averaged_from"]["sha256"]) == {
        "checkpoint-2",
        "checkpoint-4",
    }
    weights = (averaged / "model.safetensors").read_bytes()
    shutil.copy(run / "checkpoint-2" / "model.safetensors", run / "checkpoint-4" / "model.safetensors")
    result = run_cli("eval.py", "translate", "--model", str(run), "--average_last", "2", stdin="seven\n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (averaged / "model.safetensors").read_bytes() != weights
    assert not (averaged / "eval_results_test.json").exists()  # the reports of the average it replaced go with it


def waits_for_a_lock(pid: int) -> bool:
    """Whether process `pid` is blocked on a file lock: /proc/locks lists each waiter on a `->` line."""
    lines = Path("/proc/locks").read_text().splitlines()
    return any(fields[1] == "->" and fields[5] == str(pid) for fields in map(str.split, lines))


@pytest.mark.slow
def test_two_evaluations_averaging_one_run_at_once_make_one_average_and_keep_both_reports(
    trained_run, tmp_path, monkeypatch
):
    """eval.py --average_last on two splits at once: the second starts while the first makes the average, waits for
    it to be swapped in and takes it; neither swaps a folder under the other, so both reports stay."""
    from eval import main

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("averaged-*"))
    averaged = run / "averaged-last-2"
    flags = ("--model", str(run), "--average_last", "2", "--num_beams", "1", "--max_length_offset", str(OFFSET))
    stderr = tmp_path / "other.stderr"
    others = []
    save = vanilla_averaging.save_model_atomically

    def save_while_another_averages(*args) -> None:
        """Starts the other eval.py, lets it run until it waits for a lock (or ends), then saves this one's average."""
        with stderr.open("w") as log:
            command = [sys.executable, str(ROOT / "eval.py"), *flags, "--split", "test"]
            others.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=environment()))
        while others[0].poll() is None and not waits_for_a_lock(others[0].pid):
            time.sleep(0.05)
        save(*args)

    monkeypatch.setattr(vanilla_averaging, "save_model_atomically", save_while_another_averages)
    main([*flags, "--split", "validation"])
    assert others[0].wait(timeout=300) == 0, stderr.read_text()[-3000:]
    assert {"eval_results_validation.json", "eval_results_test.json"} <= {path.name for path in averaged.iterdir()}
    assert "holds the average of these checkpoints already" in stderr.read_text()
    marker = json.loads((averaged / "averaged_from.json").read_text())
    assert marker["checkpoints"] == ["checkpoint-2", "checkpoint-4"]
    AutoModelForSeq2SeqLM.from_pretrained(averaged, trust_remote_code=True)  # a whole model, no half-written folder
    assert not [path.name for path in run.iterdir() if path.name.startswith(".")]  # no lock or temporary folder left


def start_eval_until_it_waits(flags: tuple[str, ...], log: Path) -> subprocess.Popen:
    """eval.py with `flags` in a child process (stderr to `log`), once it waits for a lock file or has ended."""
    with log.open("w") as stderr:
        command = [sys.executable, str(ROOT / "eval.py"), *flags]
        other = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=environment()
        )
    while other.poll() is None and not waits_for_a_lock(other.pid):
        time.sleep(0.05)
    return other


@pytest.mark.slow
@pytest.mark.parametrize(
    "scored, engine",
    [("--average_last", "transformers"), ("averaged-folder", "transformers"), ("averaged-folder", "ctranslate2")],
)
def test_an_average_being_scored_is_replaced_only_once_its_report_is_written(
    trained_run, tmp_path, monkeypatch, scored, engine
):
    """eval.py scores a run's average (made by it, or given as --model; translated, or converted to CTranslate2 in the
    folder) when the run saves a checkpoint, and another eval.py averages the new last two: that one waits for the
    scoring to end before it replaces the folder, so no report describes other weights than the folder's."""
    import eval as eval_cli

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("averaged-*"))
    averaged = run / "averaged-last-2"
    decoding = ("--num_beams", "1", "--max_length_offset", str(OFFSET))
    averaging = ("--model", str(run), "--average_last", "2", *decoding)
    if scored == "--average_last":
        flags = averaging
    else:
        result = run_cli("eval.py", "translate", *averaging, stdin="")
        assert result.returncode == 0, result.stderr[-3000:]
        flags = ("--model", str(averaged), *decoding)
    log = tmp_path / "other.stderr"
    others = []

    def another_averages() -> None:
        """The run saves checkpoint-6; another eval.py averages checkpoints 4 and 6, until it waits or ends."""
        shutil.copytree(run / "checkpoint-2", run / "checkpoint-6")
        others.append(start_eval_until_it_waits((*averaging, "--split", "test"), log))

    if engine == "transformers":
        translate = eval_cli.translate

        def translate_while_another_averages(*args, **kwargs):
            another_averages()
            return translate(*args, **kwargs)

        monkeypatch.setattr(eval_cli, "translate", translate_while_another_averages)
    else:
        convert = vanilla_ctranslate2.conversion

        def convert_while_another_averages(*args):
            write = convert(*args)
            # The conversion is written into its temporary folder in the averaged folder, not yet swapped in.
            return lambda target: write(target) or another_averages()

        monkeypatch.setattr(vanilla_ctranslate2, "conversion", convert_while_another_averages)
    eval_cli.main([*flags, "--split", "validation", "--engine", engine])
    assert others[0].wait(timeout=300) == 0, log.read_text()[-3000:]
    marker = json.loads((averaged / "averaged_from.json").read_text())
    assert marker["checkpoints"] == ["checkpoint-4", "checkpoint-6"]
    for report in sorted(averaged.glob("eval_results_*.json")):
        assert json.loads(report.read_text())["averaged_from"] == marker, f"{report.name} is of other weights"
    # The validation report, of the average of checkpoints 2 and 4, went with it.
    assert sorted(path.name for path in averaged.glob("eval_results_*.json")) == ["eval_results_test.json"]
    assert f"note: waiting for the eval.py runs reading {averaged} to end before replacing it\n" in log.read_text()
    assert not [path.name for path in run.iterdir() if path.name.startswith(".")]  # no lock or temporary folder left


@pytest.mark.slow
@pytest.mark.parametrize("other", ["--average_last", "averaged-folder"])
def test_two_evaluations_of_one_average_score_it_at_once(trained_run, tmp_path, monkeypatch, other):
    """eval.py --average_last scoring its average, and another eval.py of the same average started meanwhile (of the
    same checkpoints, or of the folder): neither waits for the other."""
    import eval as eval_cli

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("averaged-*"))
    averaged = run / "averaged-last-2"
    decoding = ("--num_beams", "1", "--max_length_offset", str(OFFSET))
    averaging = ("--model", str(run), "--average_last", "2", *decoding)
    flags = averaging if other == "--average_last" else ("--model", str(averaged), *decoding)
    log = tmp_path / "other.stderr"
    others = []
    translate = eval_cli.translate

    def translate_while_another_scores(*args, **kwargs):
        others.append(start_eval_until_it_waits((*flags, "--split", "test"), log))
        return translate(*args, **kwargs)

    monkeypatch.setattr(eval_cli, "translate", translate_while_another_scores)
    try:
        eval_cli.main([*averaging, "--split", "validation"])
        assert others[0].poll() == 0, log.read_text()[-3000:]  # it ended while this one scored
    finally:
        if others[0].poll() is None:
            others[0].kill()
    assert "note: waiting for" not in log.read_text()
    marker = json.loads((averaged / "averaged_from.json").read_text())
    for split in ("validation", "test"):
        assert json.loads((averaged / f"eval_results_{split}.json").read_text())["averaged_from"] == marker


@pytest.mark.slow
def test_translating_with_an_averaged_folder_waits_while_another_eval_replaces_it(trained_run, tmp_path):
    """eval.py translate --model <run>/averaged-last-2 started while another eval.py swaps in a new average waits
    for the swap (and says so) rather than load half of one folder and half of the other."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("averaged-*"))
    averaged = run / "averaged-last-2"
    result = run_cli("eval.py", "translate", "--model", str(run), "--average_last", "2", stdin="")
    assert result.returncode == 0, result.stderr[-3000:]
    log = tmp_path / "translate.stderr"
    replacing = lock_file(run / ".averaged-last-2.lock")  # the other eval.py's, while it swaps its average in
    try:
        translating = start_eval_until_it_waits(("translate", "--model", str(averaged)), log)
        assert translating.poll() is None, log.read_text()[-3000:]
    finally:
        unlock_file(replacing)
    assert translating.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert f"note: waiting for another eval.py averaging into {averaged}\n" in log.read_text()
    assert not [path.name for path in run.iterdir() if path.name.startswith(".")]  # no lock file left


@pytest.mark.slow
def test_evaluations_of_an_average_started_while_a_replacement_waits_come_after_it(trained_run, tmp_path):
    """eval.py --average_last waiting to replace an average that another eval.py reads is not passed by evaluations of
    the folder started meanwhile: they wait for the new average, so readers that keep overlapping cannot hold the
    replacement off."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("averaged-*"))
    averaged = run / "averaged-last-2"
    averaging = ("translate", "--model", str(run), "--average_last", "2")
    result = run_cli("eval.py", *averaging, stdin="")
    assert result.returncode == 0, result.stderr[-3000:]
    reading = lock_file(run / ".averaged-last-2.lock", shared=True)  # an eval.py scoring the average
    try:
        shutil.copytree(run / "checkpoint-2", run / "checkpoint-6")  # the run saves a checkpoint
        replacing = start_eval_until_it_waits(averaging, tmp_path / "replacing.stderr")
        assert replacing.poll() is None, (tmp_path / "replacing.stderr").read_text()[-3000:]
        later = start_eval_until_it_waits(("translate", "--model", str(averaged)), tmp_path / "later.stderr")
        assert later.poll() is None, "an evaluation started after the replacement read the folder first"
    finally:
        unlock_file(reading)
    assert replacing.wait(timeout=300) == 0, (tmp_path / "replacing.stderr").read_text()[-3000:]
    assert later.wait(timeout=300) == 0, (tmp_path / "later.stderr").read_text()[-3000:]
    assert f"note: waiting for another eval.py averaging into {averaged}\n" in (tmp_path / "later.stderr").read_text()
    marker = json.loads((averaged / "averaged_from.json").read_text())
    assert marker["checkpoints"] == ["checkpoint-4", "checkpoint-6"]
    assert not [path.name for path in run.iterdir() if path.name.startswith(".")]  # no lock file left


@pytest.mark.slow
def test_evaluations_averaging_together_make_the_average_once_and_read_it_at_once(trained_run, tmp_path, monkeypatch):
    """Two eval.py --average_last of one run started together (a split each) find no average: one makes it while the
    other waits, which then takes it and reads it alongside the first, not after the first's scoring."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("averaged-*"))
    averaged = run / "averaged-last-2"
    reading = threading.Barrier(2, timeout=10)
    read, written, others = [], [], []

    def evaluate() -> None:
        with vanilla_averaging.average_checkpoints(run, 2, averaged) as folder:
            reading.wait()  # the scoring: both at once, or the wait times out
            read.append(json.loads((folder / "averaged_from.json").read_text())["checkpoints"])

    choose, write = vanilla_averaging.last_checkpoints, vanilla_averaging.write_average

    def choose_while_another_starts(*args):
        if not others:  # the first look: the other evaluation starts, and looks too or waits for a lock
            others.append(threading.Thread(target=evaluate))
            others[0].start()
            while others[0].is_alive() and not waits_for_a_lock(os.getpid()):
                time.sleep(0.05)
        return choose(*args)

    monkeypatch.setattr(vanilla_averaging, "last_checkpoints", choose_while_another_starts)
    monkeypatch.setattr(vanilla_averaging, "write_average", lambda *args: written.append(args) or write(*args))
    evaluate()
    others[0].join(timeout=10)
    assert read == [["checkpoint-2", "checkpoint-4"]] * 2 and len(written) == 1
    assert not [path.name for path in run.iterdir() if path.name.startswith(".")]  # no lock file left


def test_a_shared_lock_file_admits_other_shared_holders_and_the_last_to_go_removes_it(tmp_path):
    path = tmp_path / ".averaged.lock"
    first = lock_file(path, shared=True)
    second = lock_file(path, wait=False, shared=True)  # not kept waiting by the first
    for holder in (first, second):
        with pytest.raises(LockHeld):
            lock_file(path, wait=False)
        assert path.exists()
        unlock_file(holder)
    assert not path.exists()
    exclusive = lock_file(path, wait=False)
    with pytest.raises(LockHeld):
        lock_file(path, wait=False, shared=True)
    unlock_file(exclusive)
    assert not path.exists()


def test_a_wait_for_a_lock_file_is_said_once(tmp_path, capsys):
    path = tmp_path / ".averaged.lock"
    exclusive = lock_file(path)
    waiting = threading.Thread(target=lambda: unlock_file(lock_file(path, shared=True, waiting_for="the writer")))
    waiting.start()
    waiting.join(timeout=0.5)
    assert waiting.is_alive()
    unlock_file(exclusive)  # the file goes: the waiter takes the new one without waiting again
    waiting.join(timeout=10)
    assert not waiting.is_alive()
    assert capsys.readouterr().err == "note: waiting for the writer\n"
    assert not path.exists()


@pytest.mark.slow
def test_averaging_checkpoints_of_different_shapes_is_a_usage_error(trained_run, tmp_path):
    from modeling_vanilla import VanillaConfig, VanillaForConditionalGeneration

    run = tmp_path / "run"
    for step in (2, 4):
        shutil.copytree(trained_run / "checkpoint-2", run / f"checkpoint-{step}")
    config = VanillaConfig.from_pretrained(run / "checkpoint-4")
    config.d_ff *= 2
    VanillaForConditionalGeneration(config).save_pretrained(run / "checkpoint-4")
    result = run_cli("eval.py", "translate", "--model", str(run), "--average_last", "2", stdin="seven\n")
    assert_usage_error(result, "checkpoint-2", "checkpoint-4", "shape")
    assert not (run / "averaged-last-2").exists()


@pytest.mark.slow
def test_languages_swapped_against_the_models_direction_are_refused(trained_run, test_file, tmp_path):
    model = model_copy(trained_run, tmp_path / "model", data_record(source_lang="en", target_lang="de"))
    before = tree(model)
    flags = ("--test_file", str(test_file), "--source_lang", "de", "--target_lang", "en")
    result = run_cli("eval.py", "--model", str(model), *flags)
    assert_usage_error(result, f"{model} translates en -> de (data_args.json); --source_lang de --target_lang en asks")
    assert tree(model) == before


@pytest.mark.slow
def test_an_output_file_over_the_data_the_model_was_trained_on_is_refused(trained_run, test_file, tmp_path):
    """The model's data_args.json names its run's training and validation files: no report may replace them, given as
    data flags or not (a later resume of the run would find its training data gone)."""
    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    for path in train, validation:
        shutil.copy(test_file, path)
    record = data_record(train_file=str(train), validation_file=str(validation), source_lang="en", target_lang="de")
    model = model_copy(trained_run, tmp_path / "model", record)
    for output, path, flags, named in (
        ("--predictions_file", train, ["--test_file", str(test_file)], "train_file the model was trained with"),
        # The recorded split scored: its file is the record's, not a --validation_file the user gave.
        ("--results_file", validation, ["--split", "validation"], "validation_file the model was trained with"),
    ):
        result = run_cli("eval.py", "--model", str(model), *flags, output, str(path))
        assert_usage_error(result, f"{output} {path} is also the {named}")
        assert path.read_bytes() == test_file.read_bytes()


@pytest.mark.slow
def test_an_output_file_over_a_file_of_a_dataset_folder_is_refused(trained_run, test_file, tmp_path):
    """The files of a --dataset_name folder are data files too: the folder given, or the one the model's
    data_args.json names; a compressed file among them as any other."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(test_file, corpus / "train.jsonl")
    (corpus / "test.jsonl.gz").write_bytes(gzip.compress(test_file.read_bytes()))
    before = tree(corpus)
    model = model_copy(trained_run, tmp_path / "model", data_record(dataset_name=str(corpus)))
    for output, path, flags, named in (
        ("--predictions_file", "test.jsonl.gz", ["--dataset_name", str(corpus)], f"--dataset_name {corpus}"),
        ("--results_file", "train.jsonl", ["--test_file", str(test_file)], "dataset_name the model was trained with"),
        ("--predictions_file", "test.jsonl.gz", [], "dataset_name the model was trained with"),  # no flag given
    ):
        result = run_cli("eval.py", "--model", str(model), *flags, output, str(corpus / path))
        split = path.split(".")[0]
        assert_usage_error(result, f"{output} {corpus / path} is also the {split} file {path} of the {named}")
        assert tree(corpus) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "outputs, message",
    [
        ({"--predictions_file": "test.jsonl"}, "--predictions_file {test} is also the --test_file"),
        ({"--results_file": "test.jsonl"}, "--results_file {test} is also the --test_file"),
        ({"--predictions_file": "out.txt", "--results_file": "out.txt"}, "--results_file {out} is also the --pred"),
        ({"--results_file": "model/config.json"}, "--results_file {model}/config.json is a file of the model in"),
        ({"--predictions_file": "model/tokenizer.json"}, "--predictions_file {model}/tokenizer.json is a file of the"),
        ({"--attention_file": "model/model.safetensors"}, "--attention_file {model}/model.safetensors is a file of"),
        ({"--results_file": "model/optimizer.pt"}, "--results_file {model}/optimizer.pt is a file the checkpoint in"),
        ({"--predictions_file": "model/loss_total.json"}, "--predictions_file {model}/loss_total.json is a file the"),
        (
            {"--results_file": "other/eval_results_test.json"},
            "--results_file {other}/eval_results_test.json would read as a report of the model in {other}, not of",
        ),
        (
            {"--predictions_file": "other/predictions_test.txt"},
            "--predictions_file {other}/predictions_test.txt would read as a report of the model in",
        ),
    ],
    ids=[
        "predictions-over-data",
        "results-over-data",
        "both-outputs-one-file",
        "config",
        "tokenizer",
        "weights",
        "optimizer-state",
        "loss-total",
        "report-of-another-model",
        "predictions-of-another-model",
    ],
)
def test_an_output_file_that_would_overwrite_the_data_or_the_model_is_refused(
    trained_run, test_file, tmp_path, outputs, message
):
    model, other = model_copy(trained_run, tmp_path / "model"), model_copy(trained_run, tmp_path / "other")
    test = tmp_path / "test.jsonl"
    shutil.copy(test_file, test)
    before = {**tree(model), "test.jsonl": test.read_bytes()}
    others_before = tree(other)
    flags = [item for flag, name in outputs.items() for item in (flag, str(tmp_path / name))]
    if "--attention_file" in outputs:
        flags += ["--plot_attention", "seven"]
    else:
        flags += ["--test_file", str(test), "--source_lang", "en", "--target_lang", "de"]
    result = run_cli("eval.py", "--model", str(model), *flags)
    assert_usage_error(result, message.format(test=test, out=tmp_path / "out.txt", model=model, other=other))
    assert {**tree(model), "test.jsonl": test.read_bytes()} == before and tree(other) == others_before
    assert not (tmp_path / "out.txt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["predictions-beside-the-model", "attention-beside-the-model", "hub-model-in-a-model"])
def test_an_output_file_not_given_is_named_as_its_flags_default(trained_run, test_file, tmp_path, case):
    """An output file the user did not name is the default (beside the model, or in the working folder for a Hub
    id): errors name it as that, not as a flag the user typed."""
    model = model_copy(trained_run, tmp_path / "model")
    data = ["--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de"]
    argv, cwd = ["--model", str(model), *data], tmp_path
    if case == "predictions-beside-the-model":
        (model / "predictions_test.txt").mkdir()
        expected = f"error: --predictions_file's default {model / 'predictions_test.txt'} is a folder"
    elif case == "attention-beside-the-model":
        (model / "attention.png").mkdir()
        argv = ["--model", str(model), "--plot_attention", "seven"]
        expected = f"error: --attention_file's default {model / 'attention.png'} is a folder"
    else:  # a Hub id's reports go into the working folder, here another model's
        argv, cwd = ["--model", "org/name", *data], model
        expected = f"error: --predictions_file's default {model / 'predictions_test.txt'} would read as a report of"
    before = tree(model)
    assert_usage_error(run_cli("eval.py", *argv, cwd=cwd), expected)
    assert tree(model) == before


@pytest.mark.slow
def test_a_report_in_another_models_folder_names_the_average_scored_not_a_model_flag(trained_run, test_file, tmp_path):
    """With --average_last, --model names the run: the model scored is its average."""
    run, other = tmp_path / "run", model_copy(trained_run, tmp_path / "other")
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("averaged-*"))
    data = ["--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de"]
    output = ["--predictions_file", str(other / "predictions_test.txt")]
    result = run_cli("eval.py", "--model", str(run), "--average_last", "2", *data, *output)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]  # after the averaging's progress
    assert f"in {other}, not of the averaged model {run / 'averaged-last-2'}: name a file" in error


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--predictions_file", "--results_file", "--attention_file"])
def test_no_output_file_takes_the_place_of_any_file_a_checkpoint_holds(trained_run, flag):
    """Every file train.py's Trainer wrote into a real checkpoint (the model, and the optimizer, scheduler, RNG, loss
    and batching state a resume reads) is refused as an output, whichever flag names it."""
    checkpoint = trained_run / "checkpoint-4"
    names = sorted(path.name for path in checkpoint.iterdir() if path.is_file())
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "loss_total.json"} <= set(names)
    assert [name for name in names if not refuses_output(flag, checkpoint / name)] == []


def refuses_output(flag: str, path: Path) -> bool:
    """Whether eval.py refuses `path` as the output file of `flag`."""
    try:
        check_output_files({flag: path}, {})
    except UsageError:
        return True
    return False


@pytest.mark.slow
def test_attention_file_that_is_a_folder_is_a_usage_error_and_leaves_no_temporary_file(trained_run, tmp_path):
    folder = tmp_path / "plots"
    folder.mkdir()
    result = run_cli(
        "eval.py", *("--model", str(trained_run), "--plot_attention", "seven", "--attention_file", str(folder))
    )
    assert_usage_error(result, "--attention_file", str(folder))
    assert [path.name for path in tmp_path.rglob("*")] == ["plots"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "flag, where",
    [
        ("--results_file", "parent-is-a-file"),
        ("--predictions_file", "parent-is-a-file"),
        ("--results_file", "folder-nobody-can-write"),
    ],
)
def test_unwritable_output_is_refused_before_translating(trained_run, test_file, tmp_path, flag, where):
    """Permission bits do not stop root, so: a path below a file, and /proc (creating a file there fails for root)."""
    (tmp_path / "a-file").write_text("")
    unwritable = tmp_path / "a-file" / "out.txt" if where == "parent-is-a-file" else Path("/proc/out.json")
    outputs = {"--results_file": tmp_path / "report.json", "--predictions_file": tmp_path / "hypotheses.txt"}
    outputs[flag] = unwritable
    result = run_cli(
        "eval.py",
        *("--model", str(trained_run), "--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de"),
        *(item for name, path in outputs.items() for item in (name, str(path))),
    )
    assert_usage_error(result, flag, str(unwritable))
    assert [path.name for path in tmp_path.iterdir()] == ["a-file"]  # nothing translated, nothing written


@pytest.mark.slow
def test_binary_garbage_on_translate_stdin_is_a_usage_error(trained_run):
    result = run_cli("eval.py", "translate", "--model", str(trained_run), stdin=b"seven\n\xff\xfe\x00\x80garbage\n")
    assert_usage_error(result, "stdin", "line 2", "UTF-8")


@pytest.mark.slow
def test_translate_reads_past_a_byte_order_mark_and_stops_quietly_when_its_reader_does(trained_run):
    """A BOM on stdin is no part of the first sentence; `eval.py translate | head -1` ends without a traceback."""
    result = run_cli("eval.py", "translate", "--model", str(trained_run), stdin="\ufeffseven\nseven\n")
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = result.stdout.splitlines()
    assert first == second

    command = [sys.executable, str(ROOT / "eval.py"), "translate", "--model", str(trained_run)]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment()
    )
    process.stdin.write(b"seven\n" * 3000)
    process.stdin.close()
    process.stdout.readline()
    process.stdout.close()  # as `| head -1` does
    assert process.wait(timeout=300) == 141
    assert process.stderr.read() == b""


@pytest.mark.slow
@pytest.mark.parametrize("stdin", ["terminal", "pipe"])
def test_translate_answers_each_line_as_it_is_entered_at_a_terminal_or_written_into_a_pipe(trained_run, stdin):
    """Typed at a terminal, or written by a program that waits for its translation, each line is translated at
    once; read whole, the input would wait for its end (Ctrl-D, the pipe closed)."""
    if stdin == "terminal":
        typing, terminal = pty.openpty()
    else:
        terminal, typing = os.pipe()
    command = [sys.executable, str(ROOT / "eval.py"), "translate", "--model", str(trained_run)]
    command += ["--max_length_offset", str(OFFSET)]
    process = subprocess.Popen(
        command, stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment()
    )
    os.close(terminal)

    def answer(line: bytes) -> str:
        os.write(typing, line)
        ready, _, _ = select.select([process.stdout], [], [], 120)
        assert ready, "no translation while the input stays open"
        return process.stdout.readline().decode()

    try:
        sentences = ["three hundred and forty-five", "seven"]
        answers = [answer(b"three hundred and forty-five\n"), answer(b"\n"), answer(b"seven\n")]
        if stdin == "terminal":
            os.write(typing, b"\x04")  # Ctrl-D
        else:
            os.close(typing)
            typing = None
        assert process.wait(timeout=120) == 0, process.stderr.read().decode()[-3000:]
    finally:
        process.kill()
        if typing is not None:
            os.close(typing)
    expected = [
        one_by_one(trained_run, [sentence], longest_source(trained_run, [sentence]) + OFFSET)[0]
        for sentence in sentences
    ]
    assert answers == [f"{expected[0]}\n", "\n", f"{expected[1]}\n"]
    note = "translating each line as it is entered; end with Ctrl-D"
    assert (note in process.stderr.read().decode()) == (stdin == "terminal")


@pytest.fixture
def upper_casing(monkeypatch):
    """eval.py's translate_stdin with the model's part standing aside: each sentence comes back upper-cased."""
    import eval as eval_cli

    monkeypatch.setattr(eval_cli, "load_translation_model", lambda args: (None, None))
    monkeypatch.setattr(
        eval_cli, "translate", lambda model, tokenizer, texts, *rest, **options: [text.upper() for text in texts]
    )
    return lambda: eval_cli.translate_stdin(eval_cli.EvalArguments(model="unused"), 256, loaded=lambda: None)


def test_translate_writes_utf8_on_stdout_whatever_the_locale(monkeypatch, upper_casing):
    """stdin is read as UTF-8, so stdout is written in it too: under an ASCII locale (PYTHONIOENCODING=ascii) a
    translation with an umlaut would stop eval.py with a traceback, and under Latin-1 reach sacrebleu as bad UTF-8."""
    reading, writing = os.pipe()
    os.write(writing, "grüße\n\nzwölf\n".encode())
    os.close(writing)
    output = io.BytesIO()
    monkeypatch.setattr(sys, "stdin", open(reading, encoding="utf-8"))
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(output, encoding="ascii"))
    upper_casing()
    assert output.getvalue().decode("utf-8") == "GRÜSSE\n\nZWÖLF\n"


def test_translate_answers_a_writer_that_never_pauses_while_it_writes(monkeypatch, upper_casing):
    """A program writing a line every 20 ms gets its first answers while it still writes, not once it stops."""
    stdin, feeding = os.pipe()
    answers, stdout = os.pipe()
    monkeypatch.setattr(sys, "stdin", open(stdin, encoding="utf-8"))
    monkeypatch.setattr(sys, "stdout", open(stdout, "w", encoding="utf-8"))
    translating = threading.Thread(target=upper_casing)
    translating.start()
    written = 0
    with open(answers, "rb") as reading:
        while not select.select([reading], [], [], 0)[0] and written < 200:
            os.write(feeding, b"seven\n")
            written += 1
            time.sleep(0.02)
        os.close(feeding)
        translating.join(timeout=30)
        sys.stdout.close()
        output = reading.read()
    assert written < 200, "no answer while the input kept coming"
    assert output == b"SEVEN\n" * written


def test_translate_keeps_reading_while_its_answers_wait_to_be_read(monkeypatch, upper_casing):
    """A program that writes all its input before reading any answer: eval.py answers chunk by chunk, and with its
    answers filling stdout's pipe it still takes in the rest of the input, so neither side waits for the other."""
    stdin, feeding = os.pipe()
    answers, stdout = os.pipe()
    monkeypatch.setattr(sys, "stdin", open(stdin, encoding="utf-8"))
    monkeypatch.setattr(sys, "stdout", open(stdout, "w", encoding="utf-8"))
    translating = threading.Thread(target=upper_casing, daemon=True)
    translating.start()
    lines = [f"sentence {number}\n".encode() for number in range(100_000)]  # 1.5 MB in, as much out
    writing = threading.Thread(target=lambda: (os.write(feeding, b"".join(lines)), os.close(feeding)), daemon=True)
    writing.start()
    writing.join(timeout=60)
    assert not writing.is_alive(), "the input was not taken in while the answers waited"
    with open(answers, "rb") as reading:
        received = bytearray()
        while translating.is_alive() or select.select([reading], [], [], 0)[0]:
            if select.select([reading], [], [], 1)[0]:
                received += os.read(reading.fileno(), 1 << 16)
            elif not translating.is_alive():
                break
        sys.stdout.close()
        received += reading.read()
    assert received == b"".join(lines).upper()


def test_predictions_on_stdout_are_utf8_whatever_the_locale(monkeypatch):
    """--predictions_file - feeds sacrebleu, which reads UTF-8, under any locale."""
    import eval as eval_cli

    output = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(output, encoding="latin-1"))
    eval_cli.write_output("-", Path("unused"), "zwölf\n二十\n")
    assert output.getvalue() == "zwölf\n二十\n".encode()


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_during_a_translation_is_one_line_and_exit_128_plus_the_signal(trained_run, stop):
    """Ctrl-C, or SIGTERM as a job scheduler or `timeout` sends it: one line, the signal's exit code (130, 143)."""
    command = [sys.executable, str(ROOT / "eval.py"), "translate", "--model", str(trained_run)]
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment(),
        # As from a terminal: a suite launched in the background (`cmd &`) passes SIGINT on ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    process.stdin.write(b"three hundred and forty-five\n" * 200_000)  # more than it translates in a minute
    process.stdin.close()
    time.sleep(8)  # loading, then translating
    process.send_signal(stop)
    assert process.wait(timeout=120) == 128 + stop
    stderr = process.stderr.read().decode()
    assert stderr.splitlines()[-1:] == ["interrupted"] and "Traceback" not in stderr, stderr[-3000:]


@pytest.mark.slow
def test_folder_with_only_tokenizer_config_is_a_usage_error(trained_run, tmp_path):
    shutil.copy(trained_run / "tokenizer_config.json", tmp_path)
    assert_usage_error(run_cli("eval.py", "--model", str(tmp_path)), str(tmp_path), "no config.json")


@pytest.mark.slow
def test_model_whose_tokenizer_is_only_tokenizer_config_is_a_usage_error(trained_run, tmp_path):
    model = model_copy(trained_run, tmp_path / "model")
    (model / "tokenizer.json").unlink()
    result = run_cli("eval.py", "translate", "--model", str(model), stdin="seven\n")
    assert_usage_error(result, str(model), "no tokenizer.json")


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    from vanilla_cli import UsageError
    from vanilla_files import write_text_atomically

    (tmp_path / "report.json").mkdir()  # os.replace cannot put a file in a folder's place
    with pytest.raises(UsageError, match="report.json"):
        write_text_atomically(tmp_path / "report.json", "{}\n")
    assert [path.name for path in tmp_path.iterdir()] == ["report.json"]


def test_an_atomic_write_replaces_the_whole_file_or_leaves_the_old_one_and_no_temporary_file(tmp_path):
    from vanilla_cli import UsageError
    from vanilla_files import write_file_atomically, write_text_atomically

    path = tmp_path / "figure.png"
    write_text_atomically(path, "old")

    def fail_halfway(temporary: Path) -> None:
        assert temporary.suffix == ".png" and temporary.parent == tmp_path  # savefig reads the format from it
        temporary.write_text("half")
        raise OSError("disk full")

    with pytest.raises(UsageError, match="figure.png \\(disk full\\)"):
        write_file_atomically(path, fail_halfway)
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"] and path.read_text() == "old"
    write_text_atomically(path, "new")
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"] and path.read_text() == "new"


def test_the_next_atomic_write_cleans_up_after_a_process_killed_in_the_middle_of_one(tmp_path):
    """kill -9 leaves its temporary file or folder beside the output, or, between the two renames of a folder's swap,
    the old folder moved aside and none in its place. The next write of the same output removes what processes of this
    machine that no longer run left, and puts such an old folder back first; a running process' entries stay."""
    from vanilla_files import write_text_atomically

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone_pid = int(gone.stdout)  # exited: no process has this pid now (a reused one would only keep its entries)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host = socket.gethostname()
    try:
        output = tmp_path / "averaged-last-3"
        (tmp_path / f".averaged-last-3.{host}.{gone_pid}.old").mkdir()
        (tmp_path / f".averaged-last-3.{host}.{gone_pid}.old" / "model.safetensors").write_text("the old model")
        (tmp_path / f".averaged-last-3.{host}.{gone_pid}.tmp").mkdir()
        kept = [
            tmp_path / f".averaged-last-3.{host}.{running.pid}.tmp",
            tmp_path / f".averaged-last-3.other-host.{gone_pid}.tmp",
        ]
        for folder in kept:
            folder.mkdir()

        def refused(folder: Path) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        with pytest.raises(OSError):
            write_folder_atomically(output, refused)
        assert (output / "model.safetensors").read_text() == "the old model"  # put back, then kept by the failure
        assert sorted(tmp_path.iterdir()) == sorted([output, *kept])
        report = tmp_path / "eval_results_test.json"
        (tmp_path / f".eval_results_test.{host}.{gone_pid}.tmp.json").write_text("{half")
        write_text_atomically(report, "{}\n")
        assert sorted(tmp_path.iterdir()) == sorted([output, report, *kept])
    finally:
        running.kill()
        running.wait()


@pytest.mark.parametrize("stream", ["named-pipe", "process-substitution"])
def test_an_output_that_is_a_pipe_is_written_into_and_kept(tmp_path, stream):
    """A named pipe, or `>(gzip > out.gz)` (/dev/fd/N), is written as it goes: replacing it would leave its reader
    waiting and put a file in its place (or, for /dev/stdout as root, in /dev)."""
    from vanilla_files import check_writable, write_text_atomically

    if stream == "named-pipe":
        path = tmp_path / "fifo"
        os.mkfifo(path)
        received = []
        reader = threading.Thread(target=lambda: received.append(path.read_text()))
        reader.start()
    else:
        read_end, write_end = os.pipe()
        path = Path(f"/dev/fd/{write_end}")
    check_writable(path, "--predictions_file")
    write_text_atomically(path, "hypotheses\n")
    if stream == "named-pipe":
        reader.join(timeout=30)
        assert received == ["hypotheses\n"] and path.is_fifo()
    else:
        os.close(write_end)
        assert os.read(read_end, 100) == b"hypotheses\n"
        os.close(read_end)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["fifo"] if stream == "named-pipe" else [])


def test_an_output_that_is_an_open_file_is_appended_through_it(tmp_path):
    """/dev/stdout (or /dev/fd/N) redirected to a file names an open file, not a place to put one: the output goes
    through the descriptor, after what the process wrote there, and /dev (where the rename would land) is left as
    it is. Replacing it would swap the /dev/stdout link for a file, as root."""
    from vanilla_files import check_writable, open_descriptor, write_text_atomically

    redirected = tmp_path / "redirected.txt"
    descriptor = os.open(redirected, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(descriptor, b"printed before\n")
        path = Path(f"/dev/fd/{descriptor}")
        assert open_descriptor(path) == descriptor and open_descriptor(Path("/dev/stdout")) == 1
        assert open_descriptor(redirected) is None
        check_writable(path, "--predictions_file")
        write_text_atomically(path, "hypotheses\n")
        os.write(descriptor, b"printed after\n")
    finally:
        os.close(descriptor)
    assert redirected.read_text() == "printed before\nhypotheses\nprinted after\n"
    assert sorted(tmp_path.iterdir()) == [redirected]
    assert Path("/dev/stdout").is_symlink() and not list(Path("/dev").glob(f".*.{os.getpid()}.tmp*"))


@pytest.mark.slow
def test_checkpoint_discovery_skips_checkpoints_without_trainer_state(trained_run, tmp_path, capsys):
    from vanilla_files import complete_checkpoints

    for step in (2, 4, 6):
        shutil.copytree(trained_run / "checkpoint-2", tmp_path / f"checkpoint-{step}")
    (tmp_path / "checkpoint-6" / "trainer_state.json").unlink()  # Trainer writes it last: a save cut short
    assert [path.name for path in complete_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    assert "checkpoint-6" in capsys.readouterr().err


def evaluate_with(
    trained_run: Path, test_file: Path, output: Path, *args: str, env: dict | None = None
) -> tuple[list[str], dict]:
    """eval.py on the test file with extra flags: the hypotheses and the report."""
    result = run_cli(
        "eval.py",
        *("--model", str(trained_run), "--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de"),
        *("--max_length_offset", str(OFFSET), "--predictions_file", str(output / "hypotheses.txt")),
        *("--results_file", str(output / "report.json"), *args),
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return (output / "hypotheses.txt").read_text().splitlines(), json.loads((output / "report.json").read_text())


@pytest.mark.slow
def test_the_card_takes_the_new_scores_unless_the_user_edited_it(trained_run, test_file, tmp_path):
    """eval.py rebuilds a card train.py wrote (its model-index takes BLEU and chrF), reads only its own reports
    (another tool's eval_results_*.json stays out), and leaves a card the user edited as it is."""
    model = tmp_path / "model"
    shutil.copytree(trained_run, model, ignore=shutil.ignore_patterns("checkpoint-*"))
    (model / "eval_results_wmt.json").write_text('{"bleu": 27.3}\n')  # not eval.py's
    (tmp_path / "first").mkdir()
    arguments = ("--model", str(model), "--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de")
    result = run_cli("eval.py", *arguments, "--max_length_offset", str(OFFSET))
    assert result.returncode == 0, result.stderr[-3000:]
    card = ModelCard.load(model / "README.md")
    report = json.loads((model / "eval_results_test.json").read_text())
    assert [(entry.metric_type, entry.metric_value) for entry in card.data.eval_results] == [
        ("bleu", round(report["bleu"], 2)),
        ("chrf", round(report["chrf"], 2)),
    ]
    edited = card.content + "\n## Limitations\n\nNumbers below 1000 only.\n"
    (model / "README.md").write_text(edited, encoding="utf-8")
    result = run_cli("eval.py", *arguments, "--max_length_offset", str(OFFSET + 1))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"note: {model / 'README.md'} was edited since it was written; it stays as it is" in result.stderr
    assert (model / "README.md").read_text(encoding="utf-8") == edited


@pytest.mark.slow
def test_the_card_gives_the_saved_decoding_defaults_and_each_scores_own_decoding(trained_run, test_file, tmp_path):
    """A generation_config.json edited by the user is the card's decoding line once eval.py refreshes it, and each row
    of scores names the decoding of its report: a second report on the split replaces the first, row and all."""
    model = tmp_path / "model"
    shutil.copytree(trained_run, model, ignore=shutil.ignore_patterns("checkpoint-*"))
    generation = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps(generation | {"num_beams": 3, "length_penalty": 1.0}))
    arguments = ("--model", str(model), "--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de")
    result = run_cli("eval.py", *arguments, "--max_length_offset", str(OFFSET), "--num_beams", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    card = (model / "README.md").read_text(encoding="utf-8")
    assert "Decoding defaults (generation_config.json): beam size 3, length penalty alpha 1.0 (" in card
    greedy = f"(test.jsonl, test; greedy, max length input + {OFFSET}, transformers float32)"
    assert f"| BLEU {greedy} |" in card and f"| chrF {greedy} |" in card

    result = run_cli("eval.py", *arguments, "--max_length_offset", str(OFFSET))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((model / "eval_results_test.json").read_text())
    assert (report["decoding"]["num_beams"], report["decoding"]["length_penalty"]) == (3, 1.0)
    card = (model / "README.md").read_text(encoding="utf-8")
    beam = f"(test.jsonl, test; beam 3, alpha 1.0, max length input + {OFFSET}, transformers float32)"
    assert f"| chrF {beam} | {round(report['chrf'], 2)} |" in card and "greedy" not in card


@pytest.mark.slow
def test_a_ctranslate2_score_on_the_card_names_the_engine_and_its_quantization(trained_run, test_file, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained_run, model, ignore=shutil.ignore_patterns("checkpoint-*"))
    arguments = ("--model", str(model), "--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de")
    engine = ("--engine", "ctranslate2", "--quantization", "int8", "--length_penalty", "1.0")
    result = run_cli("eval.py", *arguments, *engine, "--max_length_offset", str(OFFSET))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((model / "eval_results_test.json").read_text())
    row = f"BLEU (test.jsonl, test; beam 4, alpha 1.0, max length input + {OFFSET}, CTranslate2 int8)"
    assert f"| {row} | {round(report['bleu'], 2)} |" in (model / "README.md").read_text(encoding="utf-8")


def interrupted_before_the_card(arguments: tuple[str, ...], monkeypatch) -> None:
    """eval.py (in this process) stopped after writing its report and before rewriting the card, as Ctrl-C or a kill
    would stop it there."""
    from eval import main

    def interrupt(folder: Path) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr("eval.refresh_card", interrupt)
        with pytest.raises(SystemExit) as exited:
            main(list(arguments))
    assert exited.value.code == 130


@pytest.mark.slow
def test_a_card_left_by_an_evaluation_stopped_before_rewriting_it_takes_the_next_ones_scores(
    trained_run, test_file, tmp_path, monkeypatch
):
    """The report of a stopped eval.py is there but the card does not show it: the card is still the one written,
    not an edited one, so the next eval.py rewrites it."""
    model = tmp_path / "model"
    shutil.copytree(trained_run, model, ignore=shutil.ignore_patterns("checkpoint-*"))
    written = (model / "README.md").read_text(encoding="utf-8")
    arguments = ("--model", str(model), "--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de")
    arguments += ("--max_length_offset", str(OFFSET))
    interrupted_before_the_card(arguments, monkeypatch)
    assert (model / "eval_results_test.json").is_file() and (model / "README.md").read_text() == written
    result = run_cli("eval.py", *arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "was edited since it was written" not in result.stderr
    card, report = ModelCard.load(model / "README.md"), json.loads((model / "eval_results_test.json").read_text())
    assert [(entry.metric_type, entry.metric_value) for entry in card.data.eval_results] == [
        ("bleu", round(report["bleu"], 2)),
        ("chrf", round(report["chrf"], 2)),
    ]


@pytest.mark.slow
def test_a_card_the_user_edited_after_a_stopped_evaluation_stays(trained_run, test_file, tmp_path, monkeypatch):
    """A line of the card changed by hand (the rest as written) is the user's: the next eval.py leaves it as it is."""
    model = tmp_path / "model"
    shutil.copytree(trained_run, model, ignore=shutil.ignore_patterns("checkpoint-*"))
    arguments = ("--model", str(model), "--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de")
    arguments += ("--max_length_offset", str(OFFSET))
    interrupted_before_the_card(arguments, monkeypatch)
    written = (model / "README.md").read_text(encoding="utf-8")
    edited = written.replace("trained with `train.py` on", "trained on my laptop with `train.py` on")
    assert edited != written
    (model / "README.md").write_text(edited, encoding="utf-8")
    result = run_cli("eval.py", *arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"note: {model / 'README.md'} was edited since it was written; it stays as it is" in result.stderr
    assert (model / "README.md").read_text(encoding="utf-8") == edited


@pytest.mark.slow
def test_a_card_written_before_cards_carried_their_digest_still_takes_the_new_scores(trained_run, test_file, tmp_path):
    """A card without the digest line, as train.py wrote it before, is as written when the folder's files rebuild it:
    eval.py rewrites it, digest line included."""
    model = tmp_path / "model"
    shutil.copytree(trained_run, model, ignore=shutil.ignore_patterns("checkpoint-*"))
    lines = (model / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines[-1].startswith("<!-- SHA-256 of the card above")
    (model / "README.md").write_text("\n".join(lines[:-1]), encoding="utf-8")
    arguments = ("--model", str(model), "--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de")
    result = run_cli("eval.py", *arguments, "--max_length_offset", str(OFFSET))
    assert result.returncode == 0, result.stderr[-3000:]
    card, report = ModelCard.load(model / "README.md"), json.loads((model / "eval_results_test.json").read_text())
    assert [(entry.metric_type, entry.metric_value) for entry in card.data.eval_results] == [
        ("bleu", round(report["bleu"], 2)),
        ("chrf", round(report["chrf"], 2)),
    ]
    assert card.content.splitlines()[-1].startswith("<!-- SHA-256 of the card above")


def test_a_card_an_older_train_py_wrote_is_not_said_to_be_edited(tmp_path, capsys):
    """A card from before cards carried their digest line, in an older train.py's wording, is not the card rebuilt
    now: it stays as it is, and the note says it may be an older train.py's instead of calling it edited."""
    from eval import card_to_refresh
    from vanilla_files import DATA_RECORD
    from vanilla_hub import CARD, model_card

    config = tiny_config().to_dict()
    record = {"embedded_task": True, "dataset_name": None, "train_file": None, "source_lang": "en", "target_lang": "de"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / DATA_RECORD).write_text(json.dumps(record))
    rebuilt = str(model_card(config, {"num_beams": 4, "length_penalty": 0.6}, record, {}, [], "user/model", {}))
    older = rebuilt.replace("length penalty alpha 0.6", "length penalty 0.6")  # the wording before the digest line
    assert older != rebuilt
    (tmp_path / CARD).write_text(older, encoding="utf-8")
    assert card_to_refresh(tmp_path, tmp_path / "eval_results_test.json") is False
    note = capsys.readouterr().err
    assert "written by an older train.py" in note and "was edited" not in note
    assert (tmp_path / CARD).read_text(encoding="utf-8") == older


@pytest.mark.slow
def test_a_parquet_test_file_is_scored_as_its_json_lines_twin(trained_run, test_file, tmp_path):
    parquet = tmp_path / "test.parquet"
    Dataset.from_dict({"translation": [{"en": en, "de": de} for en, de in PAIRS]}).to_parquet(parquet)
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "parquet").mkdir()
    hypotheses, report = evaluate_with(trained_run, test_file, tmp_path / "jsonl")
    from_parquet, parquet_report = evaluate_with(trained_run, parquet, tmp_path / "parquet")
    assert from_parquet == hypotheses and len(hypotheses) == len(PAIRS)
    assert (parquet_report["bleu"], parquet_report["chrf"]) == (report["bleu"], report["chrf"])


@pytest.mark.slow
@pytest.mark.parametrize("num_beams", ["4", "1"], ids=["beam-4", "greedy"])
def test_ctranslate2_float32_translates_token_for_token_like_generate(trained_run, test_file, tmp_path, num_beams):
    model = tmp_path / "model"
    shutil.copytree(trained_run, model, ignore=shutil.ignore_patterns("checkpoint-*"))
    (tmp_path / "hf").mkdir()
    (tmp_path / "ct2").mkdir()
    expected, _ = evaluate_with(model, test_file, tmp_path / "hf", "--num_beams", num_beams)
    hypotheses, report = evaluate_with(
        model, test_file, tmp_path / "ct2", "--num_beams", num_beams, "--engine", "ctranslate2"
    )
    assert hypotheses == expected
    assert (report["engine"], report["quantization"], report["dtype"]) == ("ctranslate2", "float32", None)
    assert json.loads((model / "ctranslate2-float32" / "source.json").read_text())["model.safetensors"]


@pytest.mark.slow
def test_ctranslate2_conversion_is_cached_and_redone_when_the_weights_change(trained_run, test_file, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained_run / "checkpoint-2", model)
    for name in ("hf", "first", "second", "retrained", "retrained-hf"):
        (tmp_path / name).mkdir()
    evaluate_with(model, test_file, tmp_path / "first", "--engine", "ctranslate2")
    weights = model / "ctranslate2-float32" / "model.bin"
    converted_at = weights.stat().st_mtime_ns
    evaluate_with(model, test_file, tmp_path / "second", "--engine", "ctranslate2")
    assert weights.stat().st_mtime_ns == converted_at

    shutil.copy(trained_run / "checkpoint-4" / "model.safetensors", model / "model.safetensors")
    hypotheses, _ = evaluate_with(model, test_file, tmp_path / "retrained", "--engine", "ctranslate2")
    assert weights.stat().st_mtime_ns != converted_at
    expected, _ = evaluate_with(model, test_file, tmp_path / "retrained-hf")
    assert hypotheses == expected
    assert not [path.name for path in model.iterdir() if path.name.startswith(".")], "temporary folders left behind"


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["cut-short", "weights-changed", "missing"])
def test_eval_py_converts_a_damaged_cached_conversion_again_and_translates_as_before(
    trained_run, test_file, tmp_path, damage
):
    """A cached model.bin cut short, changed in place (its size kept: CTranslate2 would load the changed weights) or
    removed is converted again with a warning, and the second run translates as the first did."""
    model = model_copy(trained_run, tmp_path / "model")
    (tmp_path / "first").mkdir()
    expected, _ = evaluate_with(model, test_file, tmp_path / "first", "--engine", "ctranslate2")
    weights = model / "ctranslate2-float32" / "model.bin"
    written = weights.read_bytes()
    middle = len(written) // 2  # inside a weight matrix, past the header and names
    if damage == "cut-short":
        weights.write_bytes(written[:middle])
    elif damage == "weights-changed":
        changed = bytes(byte ^ 0xFF for byte in written[middle : middle + 4000])
        weights.write_bytes(written[:middle] + changed + written[middle + 4000 :])
    else:
        weights.unlink()
    output = tmp_path / "again"
    result = run_cli(
        "eval.py",
        *("--model", str(model), "--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de"),
        *("--max_length_offset", str(OFFSET), "--predictions_file", str(output / "hypotheses.txt")),
        *("--results_file", str(output / "report.json"), "--engine", "ctranslate2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: the cached conversion {weights} is missing or damaged (not the file converted): converting again"
    ]
    assert (output / "hypotheses.txt").read_text().splitlines() == expected
    assert weights.read_bytes() == written


@pytest.mark.slow
def test_a_cached_conversion_that_ctranslate2_cannot_load_is_converted_again(trained_run, tmp_path, capsys):
    """A conversion whose record matches its files but which CTranslate2 cannot load (damaged before it was recorded,
    or written by another CTranslate2) is converted again with a warning, rather than ending in its traceback."""
    model = model_copy(trained_run, tmp_path / "model")
    first, tokenizer = vanilla_ctranslate2.load(str(model), "float32", threads=1)
    ids = [tokenizer(source)["input_ids"] for source, _ in PAIRS]
    expected = first.generate_ids(ids, 2, 1.0, OFFSET)
    weights = model / "ctranslate2-float32" / "model.bin"
    written = weights.read_bytes()
    weights.write_bytes(written[:100] + bytes(byte ^ 0xFF for byte in written[100:400]) + written[400:])
    record = weights.parent / "source.json"
    recorded = json.loads(record.read_text())
    recorded[vanilla_ctranslate2.CONVERTED_DIGESTS]["model.bin"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    record.write_text(json.dumps(recorded))
    capsys.readouterr()
    again, _ = vanilla_ctranslate2.load(str(model), "float32", threads=1)
    warning = capsys.readouterr().err
    assert warning.startswith(f"warning: CTranslate2 cannot load {weights.parent} (") and "converting again" in warning
    assert again.generate_ids(ids, 2, 1.0, OFFSET) == expected
    assert weights.read_bytes() == written


@pytest.mark.slow
def test_a_conversion_that_cannot_be_loaded_even_converted_again_is_a_usage_error(trained_run, tmp_path, monkeypatch):
    """When the conversion made again cannot be loaded either, the user gets one error naming the model, not
    CTranslate2's traceback."""
    model = model_copy(trained_run, tmp_path / "model")
    converted = []

    def unloadable(path, *args):
        converted.append((Path(path) / "model.bin").stat().st_ino)
        raise RuntimeError("Unsupported model binary version\nmore detail")

    monkeypatch.setattr(vanilla_ctranslate2, "translator", unloadable)
    message = f"CTranslate2 cannot load the conversion of {model} (Unsupported model binary version), even converted"
    with pytest.raises(UsageError, match=re.escape(message)):
        vanilla_ctranslate2.load(str(model), "float32", threads=1)
    assert len(converted) == 2 and converted[0] != converted[1], "not converted again before giving up"


@pytest.mark.slow
def test_a_model_folder_that_cannot_be_written_is_converted_for_the_run_only(
    trained_run, tmp_path, monkeypatch, capsys
):
    """A read-only model folder (a shared mount, another user's) still decodes through CTranslate2, from a
    conversion in a temporary folder that goes with the model; a full disk is one error naming the folder."""
    model = model_copy(trained_run, tmp_path / "model")
    before = tree(model)
    write = vanilla_ctranslate2.write_folder_atomically

    def refused_in(folder: Path, code: int):
        def writer(output: Path, *args):
            if output.parent == folder:
                raise OSError(code, os.strerror(code), str(output))
            return write(output, *args)

        return writer

    monkeypatch.setattr(vanilla_ctranslate2, "write_folder_atomically", refused_in(model, errno.EROFS))
    once, tokenizer = vanilla_ctranslate2.load(str(model), "float32", threads=1)
    assert f"note: {model} cannot be written (Read-only file system)" in capsys.readouterr().err
    scratch = Path(once.scratch.name)
    assert (scratch / "ctranslate2-float32" / "model.bin").is_file() and tree(model) == before
    monkeypatch.setattr(vanilla_ctranslate2, "write_folder_atomically", refused_in(model, errno.ENOSPC))
    with pytest.raises(UsageError, match=f"cannot write the CTranslate2 conversion to {model}/ctranslate2-float32: No"):
        vanilla_ctranslate2.load(str(model), "float32", threads=1)

    monkeypatch.undo()
    cached, _ = vanilla_ctranslate2.load(str(model), "float32", threads=1)
    assert (model / "ctranslate2-float32" / "model.bin").is_file()
    ids = [tokenizer(text).input_ids for text in ("seven", "three hundred and forty-five")]
    assert once.generate_ids(ids, 4, 1.0, 12) == cached.generate_ids(ids, 4, 1.0, 12)
    del once
    gc.collect()
    assert not scratch.exists()


def cache_listing(hub: Path) -> dict[str, str | bytes]:
    """Every entry of the Hub cache (HF_HOME/hub): a link's target, a file's bytes, a folder's name."""
    return {
        str(path.relative_to(hub)): os.readlink(path)
        if path.is_symlink()
        else path.read_bytes()
        if path.is_file()
        else "folder"
        for path in sorted(hub.rglob("*"))
    }


@pytest.mark.slow
def test_a_revision_folder_of_the_hub_cache_gets_its_outputs_in_the_working_folder(trained_run, test_file, tmp_path):
    """--model naming a snapshot folder of the Hub cache (its files links into the blobs) puts the default outputs
    in the working folder, as for a Hub id: a file written into the snapshot would pass for one of the revision's."""
    snapshot = cache_revision(trained_run, tmp_path / "hf", "org/name")
    before = cache_listing(tmp_path / "hf" / "hub")
    work = tmp_path / "work"
    work.mkdir()
    data = ("--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de")
    result = run_cli("eval.py", "--model", str(snapshot), *data, "--max_length_offset", str(OFFSET), cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    plot = run_cli("eval.py", "--model", str(snapshot), "--plot_attention", "seven", cwd=work)
    assert plot.returncode == 0, plot.stderr[-3000:]
    assert sorted(path.name for path in work.iterdir()) == [
        "attention.png",
        "eval_results_test.json",
        "predictions_test.txt",
    ]
    sources = [source for source, _ in PAIRS]
    expected = one_by_one(trained_run, sources, longest_source(trained_run, sources) + OFFSET)
    assert (work / "predictions_test.txt").read_text().splitlines() == expected
    named = run_cli(
        "eval.py", "--model", str(snapshot), *data, "--results_file", str(snapshot / "report.json"), cwd=work
    )
    assert_usage_error(named, f"--results_file {snapshot / 'report.json'} lies in a revision of the Hub's cache")
    assert cache_listing(tmp_path / "hf" / "hub") == before


@pytest.mark.slow
def test_a_run_in_the_hub_cache_is_averaged_and_its_checkpoint_scored_outside_it(trained_run, test_file, tmp_path):
    """A run pushed with its checkpoints (--hub_strategy all_checkpoints), in the Hub cache: --average_last asks for
    --averaged_model_dir rather than writing the average into the revision, and a checkpoint's reports go to the
    working folder."""
    snapshot = cache_revision(trained_run, tmp_path / "hf", "org/run")
    before = cache_listing(tmp_path / "hf" / "hub")
    work = tmp_path / "work"
    work.mkdir()
    data = ("--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de", "--max_length_offset", "2")
    refused = run_cli("eval.py", "--model", str(snapshot), "--average_last", "2", *data, cwd=work)
    assert_usage_error(refused, f"{snapshot / 'averaged-last-2'} lies in a revision of the Hub's cache", "--averaged_")
    checkpoint = run_cli("eval.py", "--model", str(snapshot / "checkpoint-4"), *data, cwd=work)
    assert checkpoint.returncode == 0, checkpoint.stderr[-3000:]
    averaged = run_cli(
        "eval.py", "--model", str(snapshot), "--average_last", "2", "--averaged_model_dir", "avg", *data, cwd=work
    )
    assert averaged.returncode == 0, averaged.stderr[-3000:]
    assert sorted(path.name for path in work.iterdir()) == ["avg", "eval_results_test.json", "predictions_test.txt"]
    assert (work / "avg" / "eval_results_test.json").is_file()
    assert cache_listing(tmp_path / "hf" / "hub") == before


@pytest.mark.slow
def test_a_checkpoint_in_the_hub_cache_is_converted_into_the_conversion_cache(trained_run, tmp_path, monkeypatch):
    """A checkpoint pushed with its run, in the Hub cache, has its CTranslate2 conversion cached under its own path
    in XDG_CACHE_HOME, apart from the run's."""
    snapshot = cache_revision(trained_run, tmp_path / "hf", "org/run")
    before = cache_listing(tmp_path / "hf" / "hub")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path, scratch = vanilla_ctranslate2.converted_model(snapshot / "checkpoint-4", "float32")
    cached = tmp_path / "xdg/vanilla-transformer/ctranslate2/models--org--run" / REVISION / "checkpoint-4"
    assert (path, scratch) == (cached / "ctranslate2-float32", None) and (path / "model.bin").is_file()
    assert cache_listing(tmp_path / "hf" / "hub") == before


@pytest.mark.slow
def test_ctranslate2_converts_a_hub_model_once_into_a_cache_of_its_own(trained_run, tmp_path):
    """--engine ctranslate2 --model org/name decodes the cached revision as generate() does, its conversion cached
    under XDG_CACHE_HOME (never among the Hub cache's snapshots and blobs) and taken again by the next run."""
    cache_revision(trained_run, tmp_path / "hf", "org/name")
    before = cache_listing(tmp_path / "hf" / "hub")
    env = environment(HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    lines = "seven\nthree hundred and forty-five\ntwelve\n"
    flags = ("--model", "org/name", "--num_beams", "2")
    reference = run_cli("eval.py", "translate", *flags, stdin=lines, env=env)
    assert reference.returncode == 0, reference.stderr[-3000:]
    converted = tmp_path / "xdg/vanilla-transformer/ctranslate2/models--org--name" / REVISION / "ctranslate2-float32"
    inodes = []
    for _ in range(2):
        result = run_cli("eval.py", "translate", *flags, "--engine", "ctranslate2", stdin=lines, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout == reference.stdout and len(result.stdout.splitlines()) == 3
        inodes.append((converted / "model.bin").stat().st_ino)
    assert inodes[0] == inodes[1], "converted again rather than taken from the cache"
    assert cache_listing(tmp_path / "hf" / "hub") == before


@pytest.mark.slow
def test_a_conversion_under_way_in_another_process_is_waited_for_and_taken(trained_run, tmp_path, monkeypatch, capsys):
    """Two eval.py runs on one model (a split each) convert it once: the second waits for the first's lock (and says
    so), then loads its conversion instead of converting again and swapping the folder under the first."""
    model = model_copy(trained_run, tmp_path / "model")
    output = model / "ctranslate2-float32"
    converted = []
    convert = vanilla_ctranslate2.conversion
    monkeypatch.setattr(vanilla_ctranslate2, "conversion", lambda *args: converted.append(args) or convert(*args))
    other = lock_file(model / ".ctranslate2-float32.lock")  # the other run's, opened apart from this run's
    found = []
    waiting = threading.Thread(target=lambda: found.append(vanilla_ctranslate2.converted_model(model, "float32")))
    waiting.start()
    waiting.join(timeout=1.0)
    assert waiting.is_alive() and not output.exists()
    # The other run converts, then lets go.
    write_folder_atomically(output, convert(model, "float32", source_fingerprint(model)))
    unlock_file(other)
    waiting.join(timeout=60)
    assert found == [(output, None)] and converted == []
    assert capsys.readouterr().err == f"note: waiting for another eval.py converting {model} into {output}\n"
    assert not [path.name for path in model.iterdir() if path.name.startswith(".")]


@pytest.mark.slow
def test_ctranslate2_int8_gives_a_translation_close_to_float32(trained_run, test_file, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained_run, model, ignore=shutil.ignore_patterns("checkpoint-*"))
    (tmp_path / "float32").mkdir()
    (tmp_path / "int8").mkdir()
    float32, float32_report = evaluate_with(model, test_file, tmp_path / "float32", "--engine", "ctranslate2")
    int8, report = evaluate_with(
        model, test_file, tmp_path / "int8", "--engine", "ctranslate2", "--quantization", "int8"
    )
    assert report["quantization"] == "int8"
    assert (model / "ctranslate2-int8" / "model.bin").stat().st_size < (
        model / "ctranslate2-float32" / "model.bin"
    ).stat().st_size
    assert len(int8) == len(float32) and all(int8)
    assert abs(report["chrf"] - float32_report["chrf"]) < 5


@pytest.mark.slow
def test_translate_mode_with_ctranslate2_writes_what_generate_writes(trained_run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained_run, model, ignore=shutil.ignore_patterns("checkpoint-*"))
    stdin = "seven\n\nthree hundred and forty-five\ntwelve\n"
    arguments = ("translate", "--model", str(model), "--max_length_offset", str(OFFSET))
    expected = run_cli("eval.py", *arguments, stdin=stdin)
    result = run_cli("eval.py", *arguments, "--engine", "ctranslate2", stdin=stdin)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == expected.stdout


@pytest.mark.slow
def test_bfloat16_decoding_is_recorded_and_translates(trained_run, test_file, tmp_path):
    hypotheses, report = evaluate_with(trained_run, test_file, tmp_path, "--dtype", "bfloat16")
    assert report["dtype"] == "bfloat16"
    assert len(hypotheses) == len(PAIRS) and all(hypotheses)


@pytest.mark.slow
def test_bfloat16_weights_on_a_cpu_where_bf16_is_slow_are_loaded_with_a_warning(trained_run, monkeypatch, capsys):
    slow = "this CPU has no bf16 matrix kernels (oneDNN's need AVX-512 or AMX)"
    for problem, dtype, warned in ((slow, "bfloat16", True), (None, "bfloat16", False), (slow, None, False)):
        monkeypatch.setattr(vanilla_translation, "cpu_bf16_problem", lambda value=problem: value)
        model, _ = vanilla_translation.load_model_and_tokenizer(str(trained_run), dtype=dtype)
        warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
        assert model.dtype == (torch.bfloat16 if dtype else torch.float32)
        assert len(warnings) == warned and all("--dtype float32" in line for line in warnings), warnings


@pytest.mark.slow
def test_compiled_decoding_gives_the_hypotheses_of_generate_and_records_its_mode(trained_run, test_file, tmp_path):
    """--compile: a static cache and the decoding forward under torch.compile in --compile_mode (reduce-overhead,
    transformers' own, by default). Dynamo traces it here without generating code (backend eager): code generation
    alone takes a minute on two cores, and its output is inductor's, not this project's."""
    (tmp_path / "sitecustomize.py").write_text(
        "import torch\n"
        "compile = torch.compile\n"
        "def traced(*args, mode=None, **kwargs):\n"
        "    with open(__file__ + '.modes', 'a') as modes:\n"
        "        modes.write(f'{mode}\\n')\n"
        "    return compile(*args, **{**kwargs, 'backend': 'eager'})\n"
        "torch.compile = traced\n"
    )
    env = environment(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    expected, _ = evaluate_with(trained_run, test_file, tmp_path)
    hypotheses, report = evaluate_with(trained_run, test_file, tmp_path, "--compile", env=env)
    assert hypotheses == expected
    assert (report["decoding"]["compile"], report["decoding"]["compile_mode"]) == (True, "reduce-overhead")
    assert (tmp_path / "sitecustomize.py.modes").read_text() == "reduce-overhead\n"


@pytest.mark.parametrize("num_beams", [1, 4], ids=["greedy", "beam"])
def test_compiled_decoding_runs_the_first_call_of_each_generation_eagerly_and_the_steps_compiled(
    monkeypatch, num_beams
):
    """As transformers' own compiled decoding: the call that allocates the static cache (and computes the source's
    cross-attention keys and values) is eager, every later step is the compiled one; the tokens are the eager ones."""
    model = VanillaForConditionalGeneration(tiny_config()).eval()
    calls = []

    def compile(forward, mode, backend):
        def compiled(*args, **kwargs):
            calls.append(mode)
            return forward(*args, **kwargs)

        return compiled

    monkeypatch.setattr(torch, "compile", compile)
    compiled = copy.deepcopy(model)
    compile_for_decoding(compiled, "reduce-overhead")
    ids = torch.randint(3, 40, (2, 7), generator=torch.Generator().manual_seed(0))
    settings = dict(input_ids=ids, num_beams=num_beams, max_new_tokens=6, min_new_tokens=6)
    with torch.no_grad():
        expected = model.generate(**settings)
        for generation in (1, 2):  # a new cache each generate(): each begins eagerly again
            assert torch.equal(compiled.generate(**settings, **COMPILED_DECODING), expected)
            assert calls == ["reduce-overhead"] * 5 * generation


@pytest.mark.slow
@pytest.mark.parametrize(
    "raised, expected",
    [
        (
            "ModuleNotFoundError(\"No module named 'ctranslate2'\", name='ctranslate2')",
            ["needs the ctranslate2 package: pip install ctranslate2", "pip install .[fast]"],
        ),
        (
            "ImportError('libcublas.so.12: cannot open shared object file: No such file or directory')",
            ["ctranslate2 is installed but cannot be imported: libcublas.so.12: cannot open shared object file"],
        ),
    ],
    ids=["missing", "installed-but-broken"],
)
def test_ctranslate2_that_cannot_be_imported_is_a_usage_error_saying_why(trained_run, tmp_path, raised, expected):
    """A machine without the package is told how to install it; one whose wheel cannot load (a library it was built
    against is missing) is told that, not to install what it has. A stand-in first on the path raises either."""
    (tmp_path / "ctranslate2").mkdir()
    (tmp_path / "ctranslate2" / "__init__.py").write_text(f"raise {raised}\n")
    env = environment(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    result = run_cli("eval.py", "--model", str(trained_run), "--engine", "ctranslate2", env=env)
    assert_usage_error(result, *expected)


@pytest.mark.slow
def test_ctranslate2_that_sees_a_gpu_but_lacks_its_cuda_libraries_is_a_usage_error(trained_run, monkeypatch):
    """The ctranslate2 wheel loads cuBLAS 12 only when it first computes; beside a torch for CUDA 13 that fails at
    the first batch. eval.py says so, and what to install, before it starts."""
    import ctranslate2

    import vanilla_ctranslate2
    from vanilla_cli import UsageError

    class NoCublas:
        num_translators = 1

        def translate_batch(self, *args, **kwargs):
            raise RuntimeError("Library libcublas.so.12 is not found or cannot be loaded")

    devices, build = [], vanilla_ctranslate2.translator
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    monkeypatch.setattr(ctranslate2, "get_supported_compute_types", lambda device: {"float32", "int8"})
    monkeypatch.setattr(
        vanilla_ctranslate2, "translator", lambda path, device, *args: devices.append(device) or NoCublas()
    )
    with pytest.raises(UsageError) as raised:
        vanilla_ctranslate2.load(str(trained_run), "float32")
    assert devices == ["cuda"]
    message = str(raised.value)
    assert message.startswith(f"CTranslate2 {ctranslate2.__version__} sees a GPU but cannot compute on it (Library ")
    assert "pip install nvidia-cublas-cu12" in message and "CUDA_VISIBLE_DEVICES=" in message

    # Where the engine computes, the probe is a valid decoding call and the model loads (a CPU translator stands in).
    monkeypatch.setattr(vanilla_ctranslate2, "translator", lambda path, device, *args: build(path, "cpu", *args))
    model, _ = vanilla_ctranslate2.load(str(trained_run), "float32")
    assert model.device == "cpu"


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, fragment",
    [
        (("--quantization", "int8"), "--quantization applies to --engine ctranslate2"),
        (("--engine", "ctranslate2", "--dtype", "bfloat16"), "--dtype and --compile apply to --engine transformers"),
        (("--compile_mode", "default"), "--compile_mode default applies to --compile"),
        (("--engine", "ctranslate2", "--quantization", "int3"), "--quantization 'int3' must be one of"),
        (("--engine", "ctranslate2", "--quantization", "float16"), "CTranslate2 on cpu supports"),
        (("--plot_attention", " "), "--plot_attention: expected a sentence to translate, got an empty one"),
        (("--plot_attention", "seven", "--compile"), "leave out --compile"),
        (("--plot_attention", "seven", "--attention_file", "-"), "--attention_file -: the plot is an image"),
    ],
    ids=[
        "quantization-without-ctranslate2",
        "dtype-with-ctranslate2",
        "compile-mode-without-compile",
        "unknown-quantization",
        "unsupported-on-cpu",
        "plot-of-no-sentence",
        "plot-compiled",
        "plot-to-stdout",
    ],
)
def test_engine_flag_mismatches_are_usage_errors(trained_run, test_file, flags, fragment):
    result = run_cli(
        "eval.py",
        *("--model", str(trained_run), "--test_file", str(test_file), "--source_lang", "en", "--target_lang", "de"),
        *flags,
    )
    assert_usage_error(result, fragment)


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, fragment",
    [
        (("--attention_file", "plot.png"), "--attention_file names the plot of --plot_attention; pass both"),
        (("--averaged_model_dir", "averaged"), "--averaged_model_dir names the folder --average_last N averages into"),
        (("translate", "--results_file", "report.json"), "--results_file applies to scoring a split"),
        (("translate", "--split", "validation"), "--split applies to scoring a split, which eval.py translate does"),
        (
            ("--plot_attention", "seven", "--attention_file", "plot.png", "--predictions_file", "hypotheses.txt"),
            "--predictions_file applies to scoring a split, which --plot_attention does not",
        ),
        (("--max_target_length", "8"), "--max_target_length applies to training"),
    ],
    ids=[
        "attention-file-without-a-plot",
        "averaged-dir-without-averaging",
        "translate-report",
        "translate-split",
        "plot-predictions",
        "target-length",
    ],
)
def test_a_flag_left_unread_by_the_other_flags_is_a_usage_error(trained_run, tmp_path, flags, fragment):
    """A flag that another flag, or the mode, leaves unread would be dropped without a word: the plot or the
    averaged model it names never made, the report never written."""
    model = model_copy(trained_run, tmp_path / "model", data_record())
    before = tree(model)
    work = tmp_path / "work"
    work.mkdir()
    flags = ("--model", str(model), *flags, "--max_length_offset", "1", "--num_beams", "1")
    result = run_cli("eval.py", *flags, stdin="seven\n", cwd=work)
    assert_usage_error(result, fragment)
    assert tree(model) == before and list(work.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["transformers", "ctranslate2"])
def test_translations_stop_where_the_models_position_table_ends(trained_run, tmp_path, engine):
    """Learned positions: a source past the table is cut to it, and the output limit (input + offset) stops at it.
    Sinusoids: a CTranslate2 conversion holds positions past max_position_embeddings, as the sinusoids go on."""
    long_line = " ".join(["three hundred and forty-five"] * 8)  # ~50 tokens
    flags = ["translate", "--engine", engine, "--max_length_offset", "40"]
    learned = model_copy(trained_run, tmp_path / "learned")
    config = VanillaConfig.from_pretrained(learned, position_embedding_type="learned", max_position_embeddings=12)
    VanillaForConditionalGeneration(config).save_pretrained(learned)
    result = run_cli("eval.py", *flags, "--model", str(learned), stdin=f"{long_line}\nseven\n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.splitlines()) == 2
    assert "warning: 1 of 2 sources are longer than 12 tokens (the position table)" in result.stderr

    short = model_copy(trained_run, tmp_path / "sinusoids")
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 16}))
    result = run_cli("eval.py", *flags, "--model", str(short), stdin=f"{long_line}\n")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = run_cli(
        "eval.py", *flags[:1], "--max_length_offset", "40", "--model", str(trained_run), stdin=f"{long_line}\n"
    )
    assert result.stdout == expected.stdout
