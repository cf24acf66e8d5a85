"""The tests' one harness: the offline environment, the CLI runner, and the tiny trained run that tests share."""

import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds a CLI run may take


def environment(**extra: str) -> dict[str, str]:
    """os.environ, offline (nothing from the Hub), one thread a process, the project importable; `extra` on top."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **extra)
    return env


# Variables read when the CLIs run, not when the libraries are imported: a run that differs from the CLI server's
# environment only in these still goes through the server. Inductor sets the last two in the test process when a test
# there first compiles.
RUN_TIME_VARIABLES = {
    "VANILLA_FAULT",
    "PYTEST_CURRENT_TEST",
    "TORCHINDUCTOR_CACHE_DIR",
    "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR",
}


def run_cli(
    script: str,
    *args: str,
    stdin: str | bytes | None = None,
    launcher: tuple[str, ...] = (sys.executable,),
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    fresh: bool = False,
) -> subprocess.CompletedProcess:
    """The project's `script` (train.py, eval.py) with `args` in a child process; its stdout and stderr as text.

    A run with the plain interpreter and the standard environment is forked from the CLI server (cli_server.py),
    which has the libraries imported; others, and any with `fresh`, start a new interpreter."""
    env = environment() if env is None else env
    data = stdin.encode() if isinstance(stdin, str) else stdin
    if not fresh and launcher == (sys.executable,) and CliServer.serves(env):
        return CliServer.instance().run(ROOT / script, args, data, env, cwd)
    command = [*launcher, str(ROOT / script), *args]
    result = subprocess.run(command, input=data, capture_output=True, env=env, cwd=cwd, timeout=TIMEOUT)
    return completed(command, result.returncode, result.stdout, result.stderr)


def completed(command: list[str], returncode: int, stdout: bytes, stderr: bytes) -> subprocess.CompletedProcess:
    """A run's result with its output as text."""
    return subprocess.CompletedProcess(
        command, returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")
    )


class CliServer:
    """This test process' cli_server.py: started at the first run it serves, ended when the process ends."""

    _instance = None

    def __init__(self):
        self.env = environment()
        self.folder = Path(tempfile.mkdtemp(prefix="cli-server-"))
        self.log = self.folder / "server.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "cli_server.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=self.env,
                cwd=ROOT,
            )
        self.pending = b""
        atexit.register(self.close)

    @classmethod
    def instance(cls) -> "CliServer":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    @classmethod
    def serves(cls, env: dict[str, str]) -> bool:
        """Whether `env` is the environment the server imported the libraries in (or, before it starts, will import
        them in), the variables read at run time aside."""

        def imported_with(variables: dict[str, str]) -> dict[str, str]:
            return {name: value for name, value in variables.items() if name not in RUN_TIME_VARIABLES}

        return imported_with(env) == imported_with(cls._instance.env if cls._instance else environment())

    def answer(self, deadline: float | None) -> dict | None:
        """The server's next answer line, or None when the deadline passes first."""
        fd = self.process.stdout.fileno()
        while b"\n" not in self.pending:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], wait)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"the CLI server ended: {self.log.read_text(errors='replace')[-3000:]}")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, script: Path, args, stdin: bytes | None, env: dict[str, str], cwd: Path):
        command = [sys.executable, str(script), *args]
        with tempfile.TemporaryDirectory(dir=self.folder) as folder:
            files = {name: Path(folder) / name for name in ("stdin", "stdout", "stderr")}
            if stdin is None:
                files["stdin"] = Path(os.devnull)
            else:
                files["stdin"].write_bytes(stdin)
            request = {"script": str(script), "args": list(args), "env": env, "cwd": str(cwd)}
            request |= {name: str(path) for name, path in files.items()}
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
            pid = self.answer(None)["pid"]
            answer = self.answer(time.monotonic() + TIMEOUT)
            if answer is None:
                os.kill(pid, signal.SIGKILL)
                self.answer(None)
            stdout, stderr = (files[name].read_bytes() for name in ("stdout", "stderr"))
        if answer is None:
            raise subprocess.TimeoutExpired(command, TIMEOUT, stdout, stderr)
        return completed(command, answer["returncode"], stdout, stderr)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


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
