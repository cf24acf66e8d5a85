"""The tests' one harness: the offline environment, the CLI runner, and the tiny trained run that tests share."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def environment(**extra: str) -> dict[str, str]:
    """os.environ, offline (nothing from the Hub), one thread a process, the project importable; `extra` on top."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **extra)
    return env


def run_cli(
    script: str,
    *args: str,
    stdin: str | bytes | None = None,
    launcher: tuple[str, ...] = (sys.executable,),
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess:
    """The project's `script` (train.py, eval.py) with `args` in a subprocess; its stdout and stderr as text."""
    result = subprocess.run(
        [*launcher, str(ROOT / script), *args],
        input=stdin.encode() if isinstance(stdin, str) else stdin,
        capture_output=True,
        env=environment() if env is None else env,
        cwd=cwd,
        timeout=300,
    )
    stdout, stderr = (output.decode(errors="replace") for output in (result.stdout, result.stderr))
    return subprocess.CompletedProcess(result.args, result.returncode, stdout, stderr)


def train_tiny_run(output_dir: Path) -> Path:
    """A tiny model trained for 4 steps on the embedded task, with checkpoints after steps 2 and 4."""
    result = run_cli(
        "train.py",
        *("--preset", "tiny", "--max_steps", "4", "--save_steps", "2", "--warmup_steps", "2"),
        # A small learning rate keeps the outputs varied (a few steps at the paper's rate give empty ones).
        *("--learning_rate", "1e-4", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "128"),
        *("--output_dir", str(output_dir), "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir
