import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from harness import train_tiny_run  # noqa: E402

# Under pytest-xdist (make test: two workers on two cores) each worker computes on one thread, as the subprocesses
# the tests start do (harness.environment): two workers of two OpenMP threads each oversubscribe the cores, and a
# thread waiting for a descheduled sibling slows a tiny model's steps several times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """The session's one tiny trained model (harness.train_tiny_run), for every test that only needs a trained model
    and its checkpoints; a test that changes it works on a copy."""
    return train_tiny_run(tmp_path_factory.mktemp("run") / "run")
