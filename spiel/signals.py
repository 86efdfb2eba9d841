"""Stopping a training job cleanly when its scheduler asks (a time limit, a pre-emption): checkpoint, then exit
with a status that says "retry me", so that the retry resumes where it stopped (issue 16.7)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""What a scheduler sends before it ends a job: SLURM's SIGTERM at the time limit (SIGKILL follows after its
KillWait) and the warning signal of ``sbatch --signal=USR1@SECONDS``."""
EXIT_STOPPED = 75
"""Exit status of a training stopped by a signal after writing its checkpoint (EX_TEMPFAIL: retry it)."""
EXIT_USER_ERROR = 2
"""Exit status of a command stopped by bad input (its one-line message printed); not worth a retry."""


class Stopped(Exception):
    """Training was asked to stop by a signal; the checkpoint of the last completed step is written."""


@contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """Record :data:`STOP_SIGNALS` while training (the list receives them) instead of dying of them."""
    received: list[int] = []
    previous = {s: signal.signal(s, lambda number, _frame: received.append(number)) for s in STOP_SIGNALS}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
