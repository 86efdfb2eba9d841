"""One convention for work that must run in a fresh Python process (a memory limit that the parent must
survive, a peak-memory reading that earlier work must not inflate): an internal subcommand of ``python -m spiel``
that takes its whole specification as ``--spec JSON`` and prints its result, as JSON, on the last line of its
standard output. ``spiel memory`` probes with ``memory-probe``; ``python -m spiel.bench`` times each method with
``bench-method``."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def command(subcommand: str, spec: dict[str, Any], *extra: str) -> list[str]:
    """The command line that runs ``subcommand`` on ``spec`` in a fresh interpreter (this one's executable)."""
    return [sys.executable, "-m", "spiel", subcommand, "--spec", json.dumps(spec), *extra]


def run(subcommand: str, spec: dict[str, Any], *extra: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run ``subcommand`` on ``spec`` in a fresh process, its output captured as text (``kwargs``: env, timeout)."""
    return subprocess.run(command(subcommand, spec, *extra), capture_output=True, text=True, **kwargs)


def result(done: subprocess.CompletedProcess) -> dict[str, Any]:
    """The result a finished child printed: the JSON on its last line of standard output."""
    return json.loads(done.stdout.strip().splitlines()[-1])
