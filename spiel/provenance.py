"""Where a result came from (package versions, git commit, device) and crash-safe result files."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

PACKAGES = ("spiel", "torch", "transformers", "peft", "bitsandbytes", "lm_eval", "datasets", "snakemake")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None where one is absent)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(folder: Path | None = None) -> str | None:
    """The commit of the project checkout, or None outside a git work tree."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder or Path(__file__).parent,
                          capture_output=True, text=True)
    return done.stdout.strip() or None


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """A stream to a temporary file beside ``path``, renamed into place only if the block completes,
    so no half-written result is ever seen."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as stream:
            yield stream
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_json_atomic(record: Any, path: str | Path) -> None:
    """Write ``record`` as JSON through ``atomic_open``."""
    with atomic_open(path) as out:
        json.dump(record, out, indent=1, ensure_ascii=False, default=str)
        out.write("\n")


def write_jsonl(rows: list[dict], out: str | Path) -> None:
    """Write rows as JSON lines through ``atomic_open``."""
    with atomic_open(out) as stream:
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
