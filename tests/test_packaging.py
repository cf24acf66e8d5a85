"""pyproject.toml: the console scripts and the modules an installed project needs; no path hacks in bench/ or docs/."""

import importlib

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
