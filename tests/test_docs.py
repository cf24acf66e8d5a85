import dataclasses
import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest

from eval import EvalArguments
from eval import argument_parser as eval_parser
from vanilla_ctranslate2 import QUANTIZATIONS
from vanilla_train_arguments import parse_arguments

ROOT = Path(__file__).resolve().parent.parent


def load_docs_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_quote_code():
    return load_docs_script("quote_code")


def test_the_posts_quoted_code_is_the_projects_current_code():
    quote_code = load_quote_code()
    post = quote_code.POST.read_text()
    assert "<!-- quote:" in post
    assert quote_code.render(post) == post, "run: python docs/quote_code.py"


def test_a_quote_of_a_missing_name_is_an_error():
    quote_code = load_quote_code()
    with pytest.raises(LookupError, match="NoSuchClass"):
        quote_code.source_of("modeling_vanilla.py", "NoSuchClass")


def test_the_learning_curve_is_read_from_the_last_complete_checkpoint(tmp_path, monkeypatch):
    make_figures = load_docs_script("make_figures")
    monkeypatch.setattr(make_figures, "FIGURES", tmp_path / "figures")
    run = tmp_path / "run"
    log = [{"epoch": 1.0, "loss": 3.0}, {"epoch": 1.0, "eval_loss": 2.5}, {"epoch": 2.0, "loss": 2.0}]
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": log}))
    (run / "checkpoint-10").mkdir()  # killed before Trainer wrote its trainer_state.json
    figure = make_figures.learning_curve_figure(run)
    assert figure == tmp_path / "figures" / "learning_curve_run.png" and figure.read_bytes().startswith(b"\x89PNG")
    assert sorted(path.name for path in figure.parent.iterdir()) == ["learning_curve_run.png"]


def test_the_readme_and_eval_help_name_every_quantization_eval_py_takes():
    readme = " ".join((ROOT / "README.md").read_text().split())
    listed = re.search(r"`--quantization` is CTranslate2's weight and compute type: (.*?)\. ", readme).group(1)
    assert sorted(re.findall(r"`(\w+)`", listed)) == sorted(QUANTIZATIONS)
    (quantization,) = [field for field in dataclasses.fields(EvalArguments) if field.name == "quantization"]
    listed = re.findall(r"\b\w*(?:int|float)\d+\w*\b", quantization.metadata["help"])
    assert sorted(listed) == sorted(QUANTIZATIONS)


def documented_commands(*docs: str) -> list[tuple[str, list[str]]]:
    """Each train.py or eval.py command in the docs' bash blocks: the script and its arguments, without the `...`
    that stands for the reader's own and without what a pipe or a comment adds."""
    commands = []
    for doc in docs:
        for block in re.findall(r"```bash\n(.*?)```", (ROOT / doc).read_text(), re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                script = next((word for word in words if word in ("train.py", "eval.py")), None)
                if script is not None:
                    arguments = words[words.index(script) + 1 :]
                    arguments = arguments[: arguments.index("|")] if "|" in arguments else arguments
                    commands.append((script, [word for word in arguments if word != "..."]))
    return commands


COMMANDS = documented_commands("README.md", "docs/transformer-networks.md")


@pytest.mark.parametrize("script, arguments", COMMANDS, ids=[" ".join([script, *words]) for script, words in COMMANDS])
def test_every_documented_command_parses_as_its_cli_reads_it(script, arguments, monkeypatch):
    """A flag the docs spell otherwise than the CLI, or a recipe they name that is not there, fails here."""
    monkeypatch.chdir(ROOT)  # the docs' commands run from the repository root
    if script == "train.py":
        parse_arguments(arguments)
    else:
        eval_parser().parse_args_into_dataclasses(args=arguments)
