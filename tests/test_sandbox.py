"""The HumanEval sandbox scores code as before, contains hostile code at the OS level, and fails closed.

Each escape is judged by its effect seen from outside the sandbox: the file on the host, the process left
running, the connection a listener received, the evaluator alive, the secret in what comes back."""

import json
import os
import socket
import threading
import time

import pytest

from spiel.evaluate import sandbox
from spiel.evaluate.sandbox import SandboxUnavailable, humaneval_program, run_program

PROBLEM = {
    "prompt": "def add(a: int, b: int) -> int:\n    \"\"\"Sum of a and b.\"\"\"\n",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    "entry_point": "add",
}
isolated = pytest.mark.skipif(sandbox.isolation_problem() is not None,
                              reason=f"no OS-level isolation here: {sandbox.isolation_problem()}")


def test_correct_solution_passes_and_wrong_one_fails():
    assert run_program(humaneval_program(PROBLEM, "    return a + b\n"), unsafe=True).passed
    outcome = run_program(humaneval_program(PROBLEM, "    return a - b\n"), unsafe=True)
    assert not outcome.passed and outcome.status == "failed" and "AssertionError" in outcome.detail


def test_infinite_loop_times_out():
    start = time.monotonic()
    outcome = run_program(humaneval_program(PROBLEM, "    while True:\n        pass\n"), timeout=2, unsafe=True)
    assert outcome.status == "timeout" and time.monotonic() - start < 10


def test_memory_exhaustion_is_contained():
    outcome = run_program("x = bytearray(8 * 1024 ** 3)\n", timeout=5, memory_mb=512, unsafe=True)
    assert not outcome.passed and outcome.status == "failed" and "MemoryError" in outcome.detail


def test_an_accidental_fork_bomb_stops_at_the_guard():
    outcome = run_program("import os\nwhile True:\n    os.fork()\n", timeout=3, unsafe=True)
    assert not outcome.passed and "disabled in the HumanEval sandbox" in outcome.detail
    assert run_program(humaneval_program(PROBLEM, "    return a + b\n"), unsafe=True).passed


@pytest.fixture
def no_isolation(monkeypatch, tmp_path):
    """A host where bubblewrap cannot create namespaces (a stand-in ``bwrap`` that fails as it would)."""
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    sandbox.isolation_problem.cache_clear()
    yield
    sandbox.isolation_problem.cache_clear()


def test_without_isolation_generated_code_is_refused_unless_confirmed(no_isolation, tmp_path):
    marker = tmp_path / "ran"
    program = f"open({str(marker)!r}, 'w').write('x')\n"
    with pytest.raises(SandboxUnavailable, match=r"bubblewrap.*confirm_run_unsafe_code"):
        run_program(program)
    assert not marker.exists()
    assert run_program(program, unsafe=True).passed and marker.exists()  # the opt-in runs it, unisolated


@isolated
def test_writes_outside_the_sandbox_do_not_reach_the_host(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    attacks = [
        f"open({str(tmp_path / 'planted')!r}, 'w').write('x')\n",
        f"import posix\nposix.unlink({str(victim)!r})\n",
        f"import posix\nposix.system('rm -f {victim}; touch {tmp_path / 'planted'}')\n",
        f"import posix\nif posix.fork() == 0:\n    open({str(tmp_path / 'planted')!r}, 'w').write('x')\n",
        "import sys\ndel sys.modules['ctypes'], sys.modules['_ctypes']\nimport ctypes\n"
        f"ctypes.CDLL(None).unlink({str(victim).encode()!r})\n",
    ]
    for attack in attacks:
        run_program(attack, timeout=5)
        assert victim.read_text() == "keep me" and not (tmp_path / "planted").exists(), attack


SECRET = "s3cr3t-7f1d"
LEAK = ("import posix, sys\nfound = []\nfor p in posix.listdir('/proc'):\n    try:\n"
        "        found.append(open(f'/proc/{p}/environ', 'rb').read())\n    except OSError:\n        pass\n"
        f"sys.exit(0 if any(b'{SECRET}' in f for f in found) else 1)\n")
"""Passes when some process's environment that the program can read holds the secret."""


@pytest.fixture
def holder_of_a_secret():
    """A host process started with a secret in its environment (as the evaluator's would be, e.g. a token)."""
    import subprocess

    holder = subprocess.Popen(["sleep", "60"], env={**os.environ, "SPIEL_SANDBOX_SECRET": SECRET})
    yield holder
    holder.kill()
    holder.wait()


def test_the_leak_probe_finds_the_secret_without_isolation(no_isolation, holder_of_a_secret):
    assert run_program(LEAK, timeout=5, unsafe=True).passed  # what the isolated run below must not manage


@isolated
def test_the_evaluator_cannot_be_killed_or_read(holder_of_a_secret):
    pid = os.getpid()
    kill = f"import posix\nfor p in ({pid}, {holder_of_a_secret.pid}, posix.getppid(), 1):\n    try:\n" \
           "        posix.kill(p, 9)\n    except OSError:\n        pass\n"
    run_program(kill, timeout=5)
    assert holder_of_a_secret.poll() is None  # the evaluator (this test) and the other process live
    outcome = run_program(LEAK, timeout=5)
    assert not outcome.passed and SECRET not in outcome.detail


def test_without_isolation_the_evaluation_refuses_before_loading_a_model(no_isolation, tmp_path, capsys):
    from spiel.cli import main

    data = tmp_path / "humaneval.jsonl"
    data.write_text(json.dumps({"split": "test", "group": "humaneval", "task_id": "t/0", "entry_point": "add",
                                **{k: PROBLEM[k] for k in ("prompt", "test")}}) + "\n")
    argv = ["evaluate", "--model", str(tmp_path / "no-model-needed"), "--benchmark", "humaneval", "--data",
            str(data), "--out", str(tmp_path / "out.json")]
    assert main(argv) == 2 and "--confirm-run-unsafe-code" in capsys.readouterr().err


def _sandbox_processes(tag: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if tag in cmdline.read().decode(errors="replace"):
                    found.append(pid)
        except OSError:
            pass
    return found


@isolated
def test_no_process_outlives_the_timeout():
    tag = "31.4159"
    escape = ("import posix\nif posix.fork() == 0:\n    posix.setsid()\n    if posix.fork() == 0:\n"
              f"        posix.execv('/bin/sleep', ['sleep', '{tag}'])\n    posix._exit(0)\nwhile True:\n    pass\n")
    outcome = run_program(escape, timeout=2)
    assert outcome.status == "timeout"
    time.sleep(0.5)
    assert _sandbox_processes(tag) == []


@isolated
def test_the_network_is_unreachable():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(4)
    port = listener.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(_accept(listener)))
    thread.start()
    attack = f"import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n"
    outcome = run_program(attack, timeout=5)
    thread.join()
    listener.close()
    assert not outcome.passed and accepted == [None]


def _accept(listener: socket.socket):
    try:
        return listener.accept()[1]
    except TimeoutError:
        return None


@isolated
def test_isolated_runs_score_as_before():
    assert run_program(humaneval_program(PROBLEM, "    return a + b\n")).passed
    outcome = run_program(humaneval_program(PROBLEM, "    return a - b\n"))
    assert not outcome.passed and "AssertionError" in outcome.detail
