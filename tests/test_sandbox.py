"""The HumanEval sandbox passes correct code and contains hostile code; the evaluator survives."""

import time

from spiel.evaluate.sandbox import humaneval_program, run_program

PROBLEM = {
    "prompt": "def add(a: int, b: int) -> int:\n    \"\"\"Sum of a and b.\"\"\"\n",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    "entry_point": "add",
}


def test_correct_solution_passes_and_wrong_one_fails():
    assert run_program(humaneval_program(PROBLEM, "    return a + b\n")).passed
    outcome = run_program(humaneval_program(PROBLEM, "    return a - b\n"))
    assert not outcome.passed and outcome.status == "failed" and "AssertionError" in outcome.detail


def test_infinite_loop_times_out():
    start = time.monotonic()
    outcome = run_program(humaneval_program(PROBLEM, "    while True:\n        pass\n"), timeout=2)
    assert outcome.status == "timeout" and time.monotonic() - start < 10


def test_deleting_files_outside_the_temp_dir_is_contained(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    attacks = [
        f"import os\nos.remove({str(victim)!r})\n",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n",
        f"import pathlib\npathlib.Path({str(victim)!r}).unlink()\n",
        f"import subprocess\nsubprocess.run(['rm', '-f', {str(victim)!r}])\n",
    ]
    for attack in attacks:
        outcome = run_program(attack)
        assert not outcome.passed, attack
    assert victim.read_text() == "keep me"


def test_fork_bomb_is_contained():
    bomb = "import os\nwhile True:\n    os.fork()\n"
    outcome = run_program(bomb, timeout=3)
    assert not outcome.passed
    assert run_program(humaneval_program(PROBLEM, "    return a + b\n")).passed  # evaluator still works


def test_memory_exhaustion_is_contained():
    hog = "x = bytearray(8 * 1024 ** 3)\n"
    outcome = run_program(hog, timeout=5, memory_mb=512)
    assert not outcome.passed and outcome.status == "failed" and "MemoryError" in outcome.detail


def test_network_is_unavailable():
    outcome = run_program("import socket\nsocket.create_connection(('127.0.0.1', 9))\n")
    assert not outcome.passed and "sandbox" in outcome.detail
