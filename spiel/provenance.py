"""Where a result came from (package versions, git commit, device) and crash-safe result files."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
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


def code_digest() -> str:
    """SHA-256 over this package's Python sources (paths and contents): the code that computed a result, committed
    or not, in a git checkout or an installed copy."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


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
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(handle, 0o666 & ~umask)  # the permissions open() would give, not mkstemp's owner-only 0600
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


def device(kind: str = "auto") -> str:
    """The device a computation runs on, in words (CUDA device name, or the CPU); ``kind`` "cpu" forces the CPU
    even where CUDA is visible."""
    import platform

    import torch

    if kind != "cpu" and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({platform.processor() or platform.machine()}, no GPU)"


def stage_wall_times(timings: dict[str, Iterable[str | Path]]) -> dict[str, float]:
    """Wall seconds per pipeline stage: the sum of the ``s`` column of each stage's Snakemake benchmark files (a
    file that does not exist, e.g. deleted after its job ran, is skipped)."""
    import csv

    totals: dict[str, float] = {}
    for stage, paths in timings.items():
        for path in map(Path, paths):
            if not path.exists():
                continue
            with path.open() as stream:
                for row in csv.DictReader(stream, delimiter="\t"):
                    totals[stage] = totals.get(stage, 0.0) + float(row["s"])
    return {k: round(v, 1) for k, v in totals.items()}


def run_provenance(config: dict[str, Any], trained: Iterable[str | Path] = (), measured: Iterable[str | Path] = (),
                   timings: dict[str, Iterable[str | Path]] | None = None) -> dict[str, Any]:
    """Provenance of a whole run: config and its hash, commit, versions, seeds, the devices that trained (each
    ``trained`` folder's ``train_summary.json``) and measured memory (each ``measured`` result), wall time per
    stage (``timings``: stage → benchmark files). Only the files given are read: a workflow declares them."""
    import hashlib

    canonical = json.dumps(config, sort_keys=True, default=str)
    devices = {json.loads((Path(folder) / "train_summary.json").read_text()).get("device", "unrecorded")
               for folder in trained}
    devices |= {json.loads(Path(path).read_text())["device"] for path in measured}
    return {"config_sha256": hashlib.sha256(canonical.encode()).hexdigest(), "config": config,
            "git_commit": git_commit(), "versions": package_versions(), "seed": config.get("seed"),
            "device": ", ".join(sorted(devices)) or device(), "wall_s_per_stage": stage_wall_times(timings or {})}
