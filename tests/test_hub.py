"""train.py --push_to_hub against a local stand-in of the Hub API (tests/hub_standin.py), and the model card."""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from harness import run_cli
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import filter_repo_objects
from test_train import QUICK, ROOT, TINY, environment
from transformers import AutoTokenizer

from modeling_vanilla import VanillaForConditionalGeneration
from vanilla_hub import NOT_PUSHED

pytestmark = pytest.mark.slow
SOURCE = "twenty-three"
TOKEN = "hf_standinTokenNeverStored"
DECODER_INPUT = [[1, 5, 6, 7]]
MODEL_FILES = {
    "config.json",
    "configuration_vanilla.py",
    "generation_config.json",
    "model.safetensors",
    "modeling_vanilla.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_args.bin",
}
RESUME_STATE = {
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
    "loss_total.json",
    "batching.json",
}
# A fresh process: each folder's model and tokenizer through the auto classes, and its logits on SOURCE.
LOAD = f"""
import sys, torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
for folder, output in zip(sys.argv[1::2], sys.argv[2::2]):
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)
    input_ids = tokenizer([{SOURCE!r}], return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=input_ids, decoder_input_ids=torch.tensor({DECODER_INPUT})).logits
    torch.save({{"class": type(model).__name__, "input_ids": input_ids, "logits": logits}}, output)
"""


def files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def run(*command: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, env=environment() | env, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    """A tiny run that saves and pushes at steps 2 and 4 (hub_strategy all_checkpoints), then its final model."""
    tmp = tmp_path_factory.mktemp("hub")
    output_dir, record = tmp / "en-de", tmp / "hub"
    args = [*TINY, *QUICK, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--output_dir"]
    args += [str(output_dir), "--push_to_hub", "--hub_strategy", "all_checkpoints", "--hub_always_push"]
    args += ["--hub_token", TOKEN]
    result = run_cli("tests/hub_standin.py", str(record), str(ROOT / "train.py"), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, record, json.loads((record / "commits.json").read_text())


def test_each_push_commits_a_whole_model_and_no_staging_temporary_or_resume_files(pushed):
    _, _, commits = pushed
    messages = [commit["message"] for commit in commits]
    assert messages == [
        "Training in progress, step 2",
        "Training in progress, step 2, checkpoint",
        "Training in progress, step 4",
        "Training in progress, step 4, checkpoint",
        "End of training",
    ]
    for commit in commits[0], commits[2]:
        assert set(commit["added"]) == MODEL_FILES
    for commit, step in (commits[1], 2), (commits[3], 4):
        assert set(commit["added"]) == {f"checkpoint-{step}/{name}" for name in MODEL_FILES | RESUME_STATE}
    assert set(commits[-1]["added"]) == MODEL_FILES | {"README.md", "all_results.json"}
    for commit in commits:
        assert commit["deleted"] == [] and commit["repo_id"] == "standin-user/en-de"
        assert not any(part.startswith(".") for path in commit["added"] for part in Path(path).parts)
    assert json.loads((pushed[1] / "revision-0" / "config.json").read_text())["auto_map"]


def test_no_saved_or_pushed_file_holds_the_hub_token_or_the_tokenizers_last_truncation(pushed):
    """Trainer pickles its arguments, --hub_token included, into training_args.bin, which each push sends; and a
    fast tokenizer's tokenizer.json keeps the truncation of its last call, which the `tokenizers` library applies."""
    output_dir, record, _ = pushed
    saved = [path for folder in (output_dir, record) for path in folder.rglob("*") if path.is_file()]
    assert [path for path in saved if path.name == "training_args.bin"]
    assert [path for path in saved if TOKEN.encode() in path.read_bytes()] == []
    arguments = torch.load(output_dir / "training_args.bin", weights_only=False)
    assert arguments.hub_token is None and arguments.push_to_hub
    for path in saved:
        if path.name == "tokenizer.json":
            assert json.loads(path.read_text())["truncation"] is None, path


def test_the_final_push_leaves_out_every_folder_inside_the_model_folder(pushed):
    """What upload_folder would send of output_dir with a kept model (--save_at_seconds), an averaged model, a
    CTranslate2 conversion and logs beside the checkpoints: the top-level model alone."""
    output_dir = pushed[0]
    listing = [str(path.relative_to(output_dir)) for path in output_dir.rglob("*") if path.is_file()]
    listing += [f"{folder}/{name}" for folder in ("model-at-90s", "averaged-last-3") for name in MODEL_FILES]
    listing += ["model-at-90s/data_args.json", "ctranslate2-float32/model.bin", "runs/Nov28/events.out.tfevents.1"]
    assert set(filter_repo_objects(listing, ignore_patterns=NOT_PUSHED)) == MODEL_FILES | {
        "README.md",
        "all_results.json",
    }


def test_every_pushed_revision_loads_in_a_fresh_process_with_the_saved_models_logits(pushed, tmp_path):
    output_dir, record, commits = pushed
    revisions = [record / commit["revision"] for commit in commits]
    # A checkpoint push adds its folder to the revision before it: the root model stays, byte for byte.
    for index, step in (1, 2), (3, 4):
        added = {
            name: data for name, data in files(revisions[index]).items() if name not in files(revisions[index - 1])
        }
        assert {**files(revisions[index - 1]), **added} == files(revisions[index])
        assert set(added) == {f"checkpoint-{step}/{name}" for name in MODEL_FILES | RESUME_STATE}
    saved = {  # pushed folder -> the local folder train.py saved it from
        revisions[0]: output_dir / "checkpoint-2",
        revisions[2]: output_dir / "checkpoint-4",
        revisions[4]: output_dir,
        revisions[4] / "checkpoint-2": output_dir / "checkpoint-2",
        revisions[4] / "checkpoint-4": output_dir / "checkpoint-4",
    }
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    input_ids = tokenizer([SOURCE], return_tensors="pt").input_ids
    loads = {}  # one fresh process per revision, side by side
    for revision in revisions[0], revisions[2], revisions[4]:
        folders = [folder for folder in saved if revision in (folder, folder.parent)]
        outputs = [tmp_path / f"{folder.parent.name}-{folder.name}.pt" for folder in folders]
        arguments = [str(path) for pair in zip(folders, outputs, strict=True) for path in pair]
        env = environment() | {"HF_MODULES_CACHE": str(tmp_path / revision.name)}
        command = [sys.executable, "-c", LOAD, *arguments]
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        loads[revision] = (process, folders, outputs)
    for revision, (process, folders, outputs) in loads.items():
        assert process.wait(timeout=300) == 0, f"{revision.name}: {process.stderr.read()[-2000:]}"
        for folder, output in zip(folders, outputs, strict=True):
            loaded = torch.load(output)
            model = VanillaForConditionalGeneration.from_pretrained(saved[folder]).eval()
            with torch.no_grad():
                expected = model(input_ids=input_ids, decoder_input_ids=torch.tensor(DECODER_INPUT)).logits
            assert loaded["class"] == "VanillaForConditionalGeneration"
            assert torch.equal(loaded["input_ids"], input_ids)
            torch.testing.assert_close(loaded["logits"], expected, rtol=0, atol=0)


def usage_snippet(card: str) -> str:
    return re.search(r"```python\n(.*?)```", card, re.DOTALL).group(1)


def test_model_card_metadata_round_trips_and_its_snippet_loads_the_pushed_repo(pushed, tmp_path):
    output_dir, record, _ = pushed
    text = (record / "revision-4" / "README.md").read_text()
    assert text == (output_dir / "README.md").read_text()
    card = ModelCard.load(record / "revision-4" / "README.md", ignore_metadata_errors=False)
    metadata = card.data.to_dict()
    assert ModelCardData(**metadata).to_dict() == metadata
    assert metadata["language"] == ["en", "de"] and metadata["pipeline_tag"] == "translation"
    assert (metadata["library_name"], metadata["license"]) == ("transformers", "apache-2.0")
    assert "vanilla-transformer" in metadata["tags"] and "model-index" not in metadata  # not scored yet
    assert str(tmp_path.parent) not in text and str(output_dir) not in text  # no local path
    snippet = usage_snippet(text)
    assert snippet.count('"standin-user/en-de", trust_remote_code=True') == 2
    shutil.copytree(record / "revision-4", tmp_path / "repo", ignore=shutil.ignore_patterns("checkpoint-*"))
    result = run("-c", snippet.replace("standin-user/en-de", str(tmp_path / "repo")), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("['") and "Traceback" not in result.stderr


def card_command(card: str, repo: Path) -> tuple[list[str], str | None]:
    """The card's eval.py command as an argv (this interpreter, this eval.py, `repo` for its repo id), and what it
    pipes in."""
    line = re.search(r"vanilla-transformer's eval\.py[^`]*`([^`]+)`", card).group(1)
    piped, _, command = line.rpartition(" | ")
    argv = [str(repo) if word == "standin-user/en-de" else word for word in shlex.split(command)]
    assert argv[:2] == ["python", "eval.py"]
    stdin = subprocess.check_output(piped, shell=True, text=True) if piped else None
    return [sys.executable, str(ROOT / "eval.py"), *argv[2:]], stdin


def test_the_cards_eval_py_command_runs_on_the_pushed_files(pushed, tmp_path):
    """The Hub holds no data_args.json, so the card's command names the data: the embedded task's model translates;
    one trained on local files is scored on a test.jsonl of the reader's own, which the card describes."""
    from vanilla_hub import model_card

    repo = tmp_path / "repo"
    shutil.copytree(pushed[1] / "revision-4", repo, ignore=shutil.ignore_patterns("checkpoint-*"))
    assert not (repo / "data_args.json").exists()
    argv, piped = card_command((repo / "README.md").read_text(), repo)
    result = subprocess.run(argv, input=piped, cwd=tmp_path, env=environment(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert piped == "twenty-three\n" and len(result.stdout.splitlines()) == 1

    record = {"embedded_task": False, "dataset_name": None, "train_file": str(tmp_path / "train.jsonl")}
    record |= {"dataset_config_name": None, "source_lang": "en", "target_lang": "de"}
    config = json.loads((repo / "config.json").read_text())
    card = str(model_card(config, {}, record, {}, [], "standin-user/en-de", {}))
    assert '`test.jsonl` holding JSON lines `{"translation": {"en": "...", "de": "..."}}`' in card
    pairs = [{"en": "seven", "de": "sieben"}, {"en": "twelve", "de": "zwölf"}]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps({"translation": pair}) + "\n" for pair in pairs))
    argv, piped = card_command(card, repo)
    result = subprocess.run(argv, cwd=tmp_path, env=environment(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((repo / "eval_results_test.json").read_text())["num_sentences"] == 2


def test_eval_py_puts_bleu_and_chrf_into_the_cards_model_index(pushed, tmp_path):
    model = tmp_path / "en-de"
    shutil.copytree(pushed[0], model, ignore=shutil.ignore_patterns("checkpoint-*"))
    result = run_cli("eval.py", "--model", str(model), "--num_beams", "1", "--max_length_offset", "5")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((model / "eval_results_test.json").read_text())
    card = ModelCard.load(model / "README.md", ignore_metadata_errors=False)
    assert card.data.model_name == "standin-user/en-de"  # the repo id the card named before
    scores = {result.metric_type: result for result in card.data.eval_results}
    assert set(scores) == {"bleu", "chrf"}
    for metric in scores:
        assert scores[metric].metric_value == round(report[metric], 2)
        assert (scores[metric].task_type, scores[metric].dataset_split) == ("translation", "test")
    assert scores["bleu"].metric_config == report["sacrebleu_signature"]
    row = "chrF (embedded-number-words, test; greedy, max length input + 5, transformers float32)"
    assert f"| {row} | {round(report['chrf'], 2)} |" in card.text
    assert not [path.name for path in model.iterdir() if path.name.startswith(".")]  # no temporary file left


@pytest.mark.slow
@pytest.mark.parametrize("hub", ["offline", "unreachable"])
def test_a_hub_that_cannot_create_the_repository_stops_train_py_before_it_trains(tmp_path, hub):
    unreachable = dict(HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens on the discard port
    env = environment(**(unreachable if hub == "unreachable" else {}))
    output_dir = tmp_path / "en-de"
    args = [*TINY, *QUICK, "--max_steps", "2", "--output_dir", str(output_dir), "--push_to_hub", "--hub_token", "x"]
    result = run_cli("train.py", *args, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: --push_to_hub: cannot create the Hub repository 'en-de': "), error
    assert not output_dir.exists()


@pytest.mark.slow
def test_a_refused_final_push_keeps_the_saved_model_and_says_where_it_is(tmp_path):
    output_dir, record = tmp_path / "en-de", tmp_path / "hub"
    args = [*TINY, *QUICK, "--max_steps", "2", "--output_dir", str(output_dir), "--push_to_hub"]
    env = environment(HUB_STANDIN_REFUSE="End of training")
    result = run_cli("tests/hub_standin.py", str(record), str(ROOT / "train.py"), *args, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the model is saved in {output_dir}, but pushing it to standin-user/en-de failed: 403 Forbidden: "
        "no write access to standin-user/en-de"
    )
    assert json.loads((record / "commits.json").read_text()) == []
    model = VanillaForConditionalGeneration.from_pretrained(output_dir)
    assert model.config.d_model == 16


@pytest.mark.slow
def test_a_refused_checkpoint_push_is_reported_and_training_goes_on(tmp_path):
    output_dir, record = tmp_path / "en-de", tmp_path / "hub"
    args = [*TINY, *QUICK, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--output_dir"]
    args += [str(output_dir), "--push_to_hub", "--hub_strategy", "checkpoint", "--hub_always_push"]
    env = environment(HUB_STANDIN_REFUSE="Training in progress, step 2")
    result = run_cli("tests/hub_standin.py", str(record), str(ROOT / "train.py"), *args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: pushing checkpoint-2 to standin-user/en-de failed: 403 Forbidden: no write access to "
        "standin-user/en-de; the Hub does not have it, training goes on",
        "warning: the final model is on the Hub, but not every checkpoint: pushing checkpoint-2 failed (above)",
    ]
    messages = [commit["message"] for commit in json.loads((record / "commits.json").read_text())]
    assert messages == [
        "Training in progress, step 2, checkpoint",
        "Training in progress, step 4",
        "Training in progress, step 4, checkpoint",
        "End of training",
    ]


@pytest.mark.slow
def test_a_config_saved_with_push_to_hub_uploads_the_modeling_code_its_auto_map_names(tmp_path):
    """PretrainedConfig.save_pretrained(push_to_hub=True) uploads at its end: the modeling file must be in by then."""
    record, script = tmp_path / "hub", tmp_path / "push_config.py"
    script.write_text(
        "from configuration_vanilla import VanillaConfig\n"
        f"VanillaConfig(d_model=16, num_heads=2, d_ff=32).save_pretrained({str(tmp_path / 'config')!r}, "
        "push_to_hub=True, repo_id='config-only')\n"
    )
    result = run_cli("tests/hub_standin.py", str(record), str(script))
    assert result.returncode == 0, result.stderr[-3000:]
    commits = json.loads((record / "commits.json").read_text())
    assert [commit["added"] for commit in commits] == [
        ["config.json", "configuration_vanilla.py", "modeling_vanilla.py"]
    ]
    auto_map = json.loads((record / commits[0]["revision"] / "config.json").read_text())["auto_map"]
    assert {reference.split(".")[0] for reference in auto_map.values()} == {"configuration_vanilla", "modeling_vanilla"}


def test_the_card_names_local_data_by_its_file_or_folder_name_never_by_its_path(tmp_path):
    """A pushed card shows a local --train_file (of every format train.py reads) or --dataset_name folder, and an
    eval.py report's local data, by name only; a Hub dataset keeps its id, in the text and in the metadata."""
    from vanilla_corpus import DATA_FORMATS
    from vanilla_hub import model_card

    config = {name: 1 for name in ("d_model", "num_heads", "d_ff", "encoder_layers", "decoder_layers", "vocab_size")}
    local = tmp_path / "private-corpora"
    base = {"source_lang": "de", "target_lang": "en", "embedded_task": False, "dataset_name": None, "train_file": None}
    folder = local / "my-dataset"
    folder.mkdir(parents=True)
    sources = [{"train_file": str(local / f"train{suffix}")} for suffix in DATA_FORMATS]
    sources += [{"dataset_name": str(folder)}, {"dataset_name": "bentrevett/multi30k"}]
    scores = {"bleu": 1.0, "chrf": 2.0, "sacrebleu_signature": "s", "chrf_signature": "c", "split": "test"}
    reports = [{**scores, "data": str(local / "test.parquet")}, {**scores, "data": "private-corpora/test.parquet"}]
    for source in sources:
        card = str(model_card(config, {}, {**base, **source}, {}, reports, "user/model", {}))
        assert "private-corpora" not in card, card
        name = Path(source.get("train_file") or source["dataset_name"]).name
        assert name in card
        hub = source.get("dataset_name") == "bentrevett/multi30k"
        assert ("datasets:\n- bentrevett/multi30k" in card) == hub and ("datasets:" in card) == hub, card
