"""A finished training kept recoverable in its work folder, so that a retry never trains it again.

SLURM enforces time limits on a ~30 s timer: a job that ends in that window after its limit (exit 0) is still
reported ``TIMEOUT``, and Snakemake then deletes the outputs of the "failed" job and submits it again. Without a
record the retry would find neither checkpoint nor output and train from step 0. On finishing, training links every
output file into ``WORK/finished/output/`` (hard links: no extra space while the outputs exist; a copy where the
file system refuses links) beside ``run.json``, the run's fingerprint, code digest and package versions; a later
run with the same record links them back to its output instead of training — also a forced rerun. Delete
``WORK/finished`` to train again.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

FOLDER, OUTPUT, RECORD = "finished", "output", "run.json"


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link every file under ``source`` to the same place under ``target`` (a copy across file systems)."""
    for path in sorted(source.rglob("*")):
        if path.is_file():
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, destination)
            except OSError:
                shutil.copy2(path, destination)


def keep(out: Path, work: Path, key: dict[str, Any]) -> bool:
    """Record the finished output ``out`` of the run ``key`` in ``work`` (made whole, then renamed into place) and
    remove everything else there (the checkpoint, the running metrics). Best effort: where the record cannot be
    written (a full disk), False, and ``work`` as it was."""
    staging = work / f"{FOLDER}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _link_tree(out, staging / OUTPUT)
        (staging / RECORD).write_text(json.dumps(key, sort_keys=True))
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        return False
    shutil.rmtree(work / FOLDER, ignore_errors=True)
    staging.rename(work / FOLDER)
    for path in work.iterdir():
        if path.name != FOLDER:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return True


def restore(work: Path, out: Path, key: dict[str, Any]) -> bool:
    """Link the kept output of the run ``key`` back to ``out`` (replacing what is there); False, and the record
    discarded, where ``work`` holds none or another run's."""
    record = work / FOLDER / RECORD
    if not (work / FOLDER).exists():
        return False
    try:
        same = json.loads(record.read_text()) == json.loads(json.dumps(key, sort_keys=True))
    except (OSError, ValueError):  # missing, or cut short by a crash
        same = False
    if not same:
        shutil.rmtree(work / FOLDER)
        return False
    staging = out.with_name(f"{out.name}.restoring")
    shutil.rmtree(staging, ignore_errors=True)
    _link_tree(work / FOLDER / OUTPUT, staging)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return True
