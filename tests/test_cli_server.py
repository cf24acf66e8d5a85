"""The CLI server (tests/cli_server.py) runs a script as a new interpreter does: the same exit status, stdout and
stderr, in the given directory, environment and stdin, for the ways a script ends."""

import signal
import sys
import textwrap

import pytest
from harness import environment, run_cli

# Each script prints whether torch was imported before it started: the one thing a served run differs in.
PREAMBLE = "import sys\nprint('preloaded', 'torch' in sys.modules)\n"
SCRIPTS = {
    "exit status, arguments, directory, environment, stdin": """
        import os
        print(sys.argv[1:], os.getcwd(), os.environ["VANILLA_FAULT"], sys.path[0] == os.path.dirname(__file__))
        print(sys.stdin.read().upper(), end="")
        print("to stderr", file=sys.stderr)
        sys.exit(3)
    """,
    "uncaught exception": """
        def fail():
            raise ValueError("boom")
        fail()
    """,
    "exit with a message": """
        sys.exit("stopped: a message")
    """,
    "killed by a signal": """
        import os, signal
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """,
    "uncaught KeyboardInterrupt": """
        raise KeyboardInterrupt
    """,
    "exit handlers and threads": """
        import atexit, concurrent.futures, threading, time
        atexit.register(print, "at exit")
        threading.Thread(target=lambda: (time.sleep(0.5), print("thread done"))).start()
        concurrent.futures.ThreadPoolExecutor(2).submit(print, "pool task done")  # its idle workers left running
    """,
}
EXIT_STATUS = {
    "exit status, arguments, directory, environment, stdin": 3,
    "uncaught exception": 1,
    "exit with a message": 1,
    "killed by a signal": -signal.SIGKILL,
    "uncaught KeyboardInterrupt": -signal.SIGINT,
    "exit handlers and threads": 0,
}


@pytest.mark.parametrize("case", sorted(SCRIPTS))
def test_a_served_run_ends_as_a_new_interpreters_run(tmp_path, case):
    script = tmp_path / "script.py"
    script.write_text(PREAMBLE + textwrap.dedent(SCRIPTS[case]))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = environment(VANILLA_FAULT="not-a-fault-point")
    runs = {
        fresh: run_cli(str(script), "one", "two words", stdin="some input\n", env=env, cwd=cwd, fresh=fresh)
        for fresh in (True, False)
    }
    assert runs[True].stdout.startswith("preloaded False\n"), runs[True].stdout
    assert runs[False].stdout.startswith("preloaded True\n"), "the run did not go through the server"
    for result in runs.values():
        assert result.returncode == EXIT_STATUS[case], result.stderr
    assert runs[False].stdout.split("\n", 1)[1] == runs[True].stdout.split("\n", 1)[1]
    assert runs[False].stderr == runs[True].stderr


def test_a_project_cli_fails_with_the_same_error_line_served_and_fresh(tmp_path):
    runs = [
        run_cli("train.py", "--preset", "huge", "--output_dir", str(tmp_path / "out"), fresh=fresh)
        for fresh in (True, False)
    ]
    assert [run.returncode for run in runs] == [2, 2]
    assert runs[0].stderr == runs[1].stderr
    (line,) = runs[0].stderr.strip().splitlines()
    assert line.startswith("error:") and "unknown preset 'huge'" in line, line


def test_a_run_in_another_environment_or_launcher_starts_a_new_interpreter(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(PREAMBLE)
    assert run_cli(str(script)).stdout == "preloaded True\n"
    assert run_cli(str(script), env=environment(HF_HOME=str(tmp_path / "hf"))).stdout == "preloaded False\n"
    assert run_cli(str(script), launcher=(sys.executable, "-X", "utf8")).stdout == "preloaded False\n"


def test_a_run_after_the_tests_own_environment_changed_starts_a_new_interpreter(tmp_path, monkeypatch):
    script = tmp_path / "script.py"
    script.write_text(PREAMBLE)
    assert run_cli(str(script)).stdout == "preloaded True\n"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # the server imported huggingface_hub without it
    assert run_cli(str(script)).stdout == "preloaded False\n"
