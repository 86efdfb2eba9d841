"""A copy of the workflow to run Snakemake in (results land there, never in the checkout)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def workdir(tmp: Path) -> Path:
    for name in ("Snakefile", "workflow", "envs", "config", ".test", "profiles"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp / name)
    return tmp


def _sandbox_opt_in(args: tuple[str, ...]) -> list[str]:
    """Where this machine cannot isolate generated code (no bubblewrap), the tests opt in to running the tiny
    model's HumanEval completions unisolated, as a user would have to; elsewhere nothing."""
    from spiel.evaluate.sandbox import isolation_problem

    if "--config" in args or isolation_problem() is None:
        return []
    return ["--config", "protocol={humaneval: {confirm_run_unsafe_code: true}}"]


@functools.cache
def _no_scontrol() -> str:
    """A folder whose ``scontrol`` fails at once. Snakemake's SLURM plugin runs ``scontrol show config`` at every
    start; where SLURM is installed and no controller runs (CI, outside tests/test_slurm.py's cluster), scontrol
    retries for 9 s before it fails, which local runs need not wait for."""
    folder = Path(tempfile.mkdtemp(prefix="no-scontrol-"))
    (folder / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (folder / "scontrol").chmod(0o755)
    return str(folder)


def snakemake(folder: Path, *args: str, cores: bool = True, timeout: float | None = None
              ) -> subprocess.CompletedProcess:
    """Run Snakemake in ``folder`` (on 2 local cores unless ``cores`` is False, e.g. under a cluster profile)."""
    command = [*SNAKEMAKE, *(["--cores", "2"] if cores else []), *args, *_sandbox_opt_in(args)]
    env = None  # under the SLURM profile the real scontrol; locally one that fails at once
    if "profiles/slurm" not in args:
        env = {**os.environ, "PATH": _no_scontrol() + os.pathsep + os.environ["PATH"]}
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=timeout, env=env)
