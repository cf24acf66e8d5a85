import os

import pytest

from tests.harness import train_tiny_run


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> str:
    """The model folder the post's last block loads: $VANILLA_DOCS_MODEL (make docs-trained sets the demo model),
    else the tests' tiny trained run (tests/harness.py), so the block runs in every test run."""
    if os.environ.get("VANILLA_DOCS_MODEL"):
        return os.environ["VANILLA_DOCS_MODEL"]
    return str(train_tiny_run(tmp_path_factory.mktemp("docs-model") / "model"))


def pytest_collection_modifyitems(items):
    """The post's blocks run as `slow` (continued blocks re-run the ones before, the last trains a model first)."""
    for item in items:
        if item.path.suffix == ".md":
            item.add_marker(pytest.mark.slow)
