import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> str:
    """The model folder the post's last block loads: $VANILLA_DOCS_MODEL (make docs-trained sets the demo model),
    else a tiny model trained here for a few steps on the built-in task, so the block runs in every test run."""
    if os.environ.get("VANILLA_DOCS_MODEL"):
        return os.environ["VANILLA_DOCS_MODEL"]
    output = tmp_path_factory.mktemp("docs-model") / "model"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "--preset",
        "tiny",
        "--max_steps",
        "5",
        "--output_dir",
        str(output),
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
    ]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=600)
    return str(output)
