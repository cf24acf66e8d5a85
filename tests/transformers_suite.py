"""transformers' common test mixins for the installed version, fetched from its source distribution at test time.

The sdist (downloaded into ~/.cache/vanilla-transformer/sdists) ships tests/test_modeling_common.py and
tests/test_configuration_common.py, but not the three modules they import from the repository's sub-folders
(tests/exporters, tests/generation, tests/utils). Those come from a transformers checkout of the same version when
TRANSFORMERS_SOURCE names one; otherwise they are stand-ins: empty `ExportTesterMixin` and `GenerationTesterMixin`
(so the export and generate tests are not collected) and an empty `config_common_kwargs`. Nothing of transformers'
code is kept in this repository.
"""

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import transformers

VERSION = transformers.__version__
PACKAGE = "transformers_tests"
FROM_SDIST = ("test_modeling_common.py", "test_configuration_common.py")
FROM_REPOSITORY = ("exporters", "generation", "utils")
STAND_INS = {
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
}


class FetchError(RuntimeError):
    """The source distribution could not be downloaded (no package index) or did not hold the expected files."""


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vanilla-transformer"


def cache_dir() -> Path:
    """Where the extracted tests live: one folder per transformers version and source (sdist alone, or a checkout)."""
    suffix = "-source" if os.environ.get("TRANSFORMERS_SOURCE") else ""
    return cache_root() / f"transformers-tests-{VERSION}{suffix}"


def fetch_command() -> list[str]:
    """The download, into the folder where the sdist is looked for first (so it can also be run by hand)."""
    folder = cache_root() / "sdists"
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-binary",
        ":all:",
        "--no-deps",
        f"transformers=={VERSION}",
        "-d",
        str(folder),
    ]


def _download_sdist() -> Path:
    command = fetch_command()
    archive = Path(command[-1]) / f"transformers-{VERSION}.tar.gz"
    if not archive.exists():
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not archive.exists():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise FetchError(f"could not download the transformers {VERSION} sdist ({last}); run: {' '.join(command)}")
    return archive


def _extract(archive: Path, package: Path) -> None:
    with tarfile.open(archive) as tar:
        for name in FROM_SDIST:
            member = f"transformers-{VERSION}/tests/{name}"
            try:
                source = tar.extractfile(member)
            except KeyError as error:
                raise FetchError(f"{archive.name} has no {member}") from error
            (package / name).write_bytes(source.read())


def _add_repository_modules(package: Path) -> None:
    """tests/exporters, tests/generation and tests/utils from a checkout, or the stand-ins described above."""
    source = os.environ.get("TRANSFORMERS_SOURCE")
    for folder in FROM_REPOSITORY:
        if source:
            shutil.copytree(Path(source) / "tests" / folder, package / folder)
        else:
            (package / folder).mkdir()
        (package / folder / "__init__.py").touch()
    if not source:
        for path, text in STAND_INS.items():
            (package / path).write_text(text)


def suite_path() -> Path:
    """The folder holding the `transformers_tests` package; downloads once, then works offline from the cache."""
    target = cache_dir()
    if (target / PACKAGE / "__init__.py").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        work = Path(work)
        package = work / "suite" / PACKAGE
        package.mkdir(parents=True)
        _extract(_download_sdist(), package)
        _add_repository_modules(package)
        (package / "__init__.py").touch()
        try:
            (work / "suite").rename(target)  # atomic: a half-written cache is never seen
        except OSError:
            if not (target / PACKAGE / "__init__.py").exists():
                raise
    return target


def import_suite() -> tuple[ModuleType, ModuleType]:
    """transformers_tests.test_modeling_common and .test_configuration_common of the installed version."""
    path = str(suite_path())
    if path not in sys.path:
        sys.path.insert(0, path)
    return (
        importlib.import_module(f"{PACKAGE}.test_modeling_common"),
        importlib.import_module(f"{PACKAGE}.test_configuration_common"),
    )
