"""tests/transformers_suite.py: fetching transformers' common tests, the skip without an index, a checkout's mixins."""

import io
import tarfile
from pathlib import Path

import pytest
import transformers_suite

VERSION = transformers_suite.VERSION


def fake_sdist(folder: Path) -> Path:
    """An sdist holding the two common test files, each importing what the real ones import from the repository."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"transformers-{VERSION}.tar.gz"
    files = {
        "test_modeling_common.py": "from .exporters.test_export import ExportTesterMixin\n"
        "from .generation.test_utils import GenerationTesterMixin\n",
        "test_configuration_common.py": "from .utils.test_configuration_utils import config_common_kwargs\n",
    }
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(f"transformers-{VERSION}/tests/{name}")
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return archive


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TRANSFORMERS_SOURCE", raising=False)
    return tmp_path / "cache" / "vanilla-transformer"


def test_without_a_package_index_the_error_names_the_download_command(cache, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(transformers_suite.FetchError) as error:
        transformers_suite.suite_path()
    command = f"pip download --no-binary :all: --no-deps transformers=={VERSION} -d {cache / 'sdists'}"
    assert command in str(error.value)
    assert not (cache / f"transformers-tests-{VERSION}").exists()


def test_stand_ins_replace_the_repository_modules_and_the_cache_is_reused(cache, tmp_path, monkeypatch):
    downloads = []

    def download() -> Path:
        downloads.append(1)
        return fake_sdist(tmp_path / "sdist")

    monkeypatch.setattr(transformers_suite, "_download_sdist", download)
    first = transformers_suite.suite_path()
    assert transformers_suite.suite_path() == first == cache / f"transformers-tests-{VERSION}"
    assert len(downloads) == 1
    package = first / transformers_suite.PACKAGE
    assert "class GenerationTesterMixin" in (package / "generation" / "test_utils.py").read_text()
    assert (package / "test_modeling_common.py").read_text().startswith("from .exporters.test_export import")


def test_a_checkout_supplies_the_generation_export_and_utils_modules(cache, tmp_path, monkeypatch):
    checkout = tmp_path / "transformers"
    for folder, text in [
        ("exporters/test_export.py", "class ExportTesterMixin:\n    from_checkout = True\n"),
        ("generation/test_utils.py", "class GenerationTesterMixin:\n    from_checkout = True\n"),
        ("utils/test_configuration_utils.py", "config_common_kwargs = {'from_checkout': True}\n"),
    ]:
        (checkout / "tests" / folder).parent.mkdir(parents=True, exist_ok=True)
        (checkout / "tests" / folder).write_text(text)
    monkeypatch.setenv("TRANSFORMERS_SOURCE", str(checkout))
    monkeypatch.setattr(transformers_suite, "_download_sdist", lambda: fake_sdist(tmp_path / "sdist"))
    package = transformers_suite.suite_path() / transformers_suite.PACKAGE
    assert package.parent == cache / f"transformers-tests-{VERSION}-source"
    for path in ["exporters/test_export.py", "generation/test_utils.py", "utils/test_configuration_utils.py"]:
        assert "from_checkout" in (package / path).read_text(), path
