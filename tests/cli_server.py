"""A Python that imports the CLIs' libraries once, then forks a child for each CLI run a test asks for.

Importing torch, transformers, datasets and the rest takes about 8 s on two cores, most of a tiny train.py run; a
child forked from this process starts with them imported and runs the script as `python script.py args` would
(its own working directory, environment, stdin, stdout, stderr, exit status). The project's own modules are not
imported here: each child imports them afresh, as a new process does.

Protocol, one JSON object a line: the test writes a request ({"script", "args", "env", "cwd", "stdin", "stdout",
"stderr"}: the last three file paths) on this process' stdin; it answers {"pid": ...} when the child starts and
{"returncode": ...} when it ends (negative: killed by that signal, as subprocess reports it). EOF ends the server.

harness.run_cli sends here only runs whose environment is the one this server was started with (the libraries read
some variables when imported), and starts a fresh interpreter for the others.
"""

import atexit
import importlib
import io
import json
import os
import runpy
import signal
import sys
import threading
import traceback

# What train.py and eval.py import from outside the project, heaviest first.
LIBRARIES = [
    "torch",
    "transformers",
    "transformers.modeling_utils",
    "transformers.generation",
    "transformers.trainer_seq2seq",
    "transformers.models.auto",
    "datasets",
    "accelerate",
    "tokenizers",
    "safetensors.torch",
    "evaluate",
    "sacrebleu",
    "yaml",
]


def standard_streams(unbuffered: bool) -> None:
    """sys.stdin/stdout/stderr on file descriptors 0/1/2, as the interpreter builds them at start-up."""

    def text(fd: int, mode: str, **options) -> io.TextIOWrapper:
        raw = io.FileIO(fd, mode, closefd=False)
        buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
        return io.TextIOWrapper(buffered, encoding="utf-8", **options)

    sys.stdin = sys.__stdin__ = text(0, "r")
    sys.stdout = sys.__stdout__ = text(1, "w", write_through=unbuffered)
    sys.stderr = sys.__stderr__ = text(2, "w", errors="backslashreplace", line_buffering=True)


def exit_status(error: SystemExit) -> int:
    """The exit status the interpreter gives a SystemExit: None is 0, an int itself, anything else printed and 1."""
    if error.code is None or isinstance(error.code, int):
        return error.code or 0
    print(error.code, file=sys.stderr)
    return 1


def print_uncaught(error: BaseException, script: str) -> None:
    """sys.excepthook on the error, its traceback from the script's frame on (runpy's frames above it left out)."""
    frames = error.__traceback__
    while frames is not None and frames.tb_frame.f_code.co_filename != script:
        frames = frames.tb_next
    if frames is not None:
        error = error.with_traceback(frames)
    sys.excepthook(type(error), error, error.__traceback__)


def run_child(request: dict) -> None:
    """In the forked child: become `python script args` with the request's files, directory and environment."""
    for fd, (path, flags) in enumerate(
        [
            (request["stdin"], os.O_RDONLY),
            (request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            (request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        ]
    ):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    standard_streams(unbuffered=bool(os.environ.get("PYTHONUNBUFFERED")))
    script = request["script"]
    sys.argv = [script, *request["args"]]
    sys.path[0] = os.path.dirname(script)
    status = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as error:
        status = exit_status(error)
    except BaseException as error:  # noqa: BLE001 - reported as the interpreter reports an uncaught exception
        print_uncaught(error, script)
        status = -signal.SIGINT if isinstance(error, KeyboardInterrupt) else 1
    threading._shutdown()  # as the interpreter at exit: threading's exit hooks (thread pools), then non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if status == -signal.SIGINT:  # an uncaught KeyboardInterrupt ends the interpreter by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)


def main() -> None:
    for name in LIBRARIES:
        importlib.import_module(name)
    requests, answers = sys.stdin, sys.stdout
    for line in requests:
        request = json.loads(line)
        answers.flush()
        pid = os.fork()
        if pid == 0:
            try:
                run_child(request)
            except BaseException:  # noqa: BLE001 - setting up the child failed: say why, on its stderr
                traceback.print_exc()
            os._exit(70)
        answers.write(json.dumps({"pid": pid}) + "\n")
        answers.flush()
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
