"""Where a result came from (package versions, git commit, device) and crash-safe result files."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

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


def write_json_atomic(record: Any, path: str | Path) -> None:
    """Write JSON next to ``path`` and rename it into place, so no half-written result is ever seen."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(record, out, indent=1, ensure_ascii=False, default=str)
            out.write("\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
