"""pyproject.toml: the console scripts and the modules an installed project needs; no path hacks in bench/ or docs/."""

import ast
import importlib
import re
import shutil
import subprocess
import sys

import pytest
import tomllib
from harness import ROOT


def test_console_scripts_are_the_main_of_train_and_eval():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"vanilla-train": "train:main", "vanilla-eval": "eval:main"}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))


def test_every_top_level_module_is_installed_and_bench_and_docs_import_without_path_hacks():
    modules = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["py-modules"]
    assert sorted(modules) == sorted(path.stem for path in ROOT.glob("*.py"))
    for script in [*ROOT.glob("bench/*.py"), *ROOT.glob("docs/*.py")]:
        assert "sys.path" not in script.read_text(), script


def test_dependency_floors_are_at_least_what_transformers_itself_needs():
    """pyproject.toml's lowest torch, accelerate, tokenizers and safetensors are ones the installed transformers runs
    with: it does not declare torch or accelerate, turns PyTorch off below its own floor ("PyTorch was not found") and
    its Trainer refuses an older accelerate; the floors are tested together by `make test-lowest`."""
    from packaging.version import Version
    from transformers.dependency_versions_table import deps
    from transformers.utils.import_utils import ACCELERATE_MIN_VERSION

    floors = {}
    for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, floor = re.fullmatch(r"([\w-]+)>=([\d.]+).*", requirement).groups()
        floors[name] = Version(floor)
    needed = {
        name: Version(re.search(r">=([\d.]+)", deps[name]).group(1)) for name in ("torch", "tokenizers", "safetensors")
    }
    needed["accelerate"] = Version(ACCELERATE_MIN_VERSION)
    for name, version in needed.items():
        assert floors[name] >= version, f"{name}>={floors[name]} in pyproject.toml; transformers needs {version}"


@pytest.mark.slow
def test_an_installed_project_scores_offline_with_the_metric_modules_it_installs(tmp_path):
    """A plain (not editable) install holds the evaluate modules that eval.py and train.py score with offline."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    source = tmp_path / "source"
    source.mkdir()
    for name in ["pyproject.toml", "README.md", *(f"{module}.py" for module in setuptools["py-modules"])]:
        shutil.copy(ROOT / name, source / name)
    for package in setuptools["packages"]:
        folder = package.replace(".", "/")
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
        )
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site)]
    subprocess.run([*install, str(source)], check=True, capture_output=True, timeout=300)
    script = f"""
import sys
sys.meta_path = [finder for finder in sys.meta_path if not finder.__module__.startswith("__editable__")]
import vanilla_metrics
assert vanilla_metrics.__file__.startswith({str(site)!r}), vanilla_metrics.__file__
scores = vanilla_metrics.score(vanilla_metrics.load_metrics(), ["a cat sat on the mat ."], ["a cat sat on the mat ."])
print(round(scores["sacrebleu"]["score"], 2), round(scores["chrf"]["score"], 2))
"""
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["100.0", "100.0"]


# What Python 3.11 added that 3.10 lacks, from its "What's New": typing's names, and the modules.
TYPING_SINCE_3_11 = {"Unpack", "Self", "LiteralString", "Never", "NotRequired", "Required", "TypeVarTuple"}
TYPING_SINCE_3_11 |= {"assert_never", "assert_type", "reveal_type", "dataclass_transform", "get_overloads"}
MODULES_SINCE_3_11 = {"tomllib", "wsgiref.types"}


def test_the_code_runs_on_the_oldest_python_that_pyproject_admits():
    """requires-python says 3.10: every installed module parses as 3.10's grammar and imports nothing 3.11 added
    (the model takes Unpack from transformers, which falls back to typing_extensions, as its own models do)."""
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"] == ">=3.10"
    modules = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["py-modules"]
    for path in [*(ROOT / f"{module}.py" for module in modules), *ROOT.glob("vanilla_metrics/*/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path), feature_version=(3, 10))):
            if isinstance(node, ast.ImportFrom) and node.module == "typing":
                assert not {alias.name for alias in node.names} & TYPING_SINCE_3_11, path
            imported = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            imported += [node.module] if isinstance(node, ast.ImportFrom) else []
            assert not set(imported) & MODULES_SINCE_3_11, path
