"""The replication audit: our tables beside the paper's, cell by cell, and the paper's claims checked.

Each claim of §5 (and App. C–D) is a function over a set of tables — ours, or the paper's own tables in
``config/paper_results`` — so the audit shows both that the claim holds in the published numbers and whether it
holds in this run. A verdict is "replicated", "not replicated" or "not measured" (a table or row is missing).
Single-seed comparisons of benchmark scores also say whether the difference lies within the combined standard
error of the two evaluations (``within_stderr``), which the verdict does not hide.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .tables import read_result

REPLICATED, NOT_REPLICATED, NOT_MEASURED = "replicated", "not replicated", "not measured"
KEYS = {"table1": ["size", "method"], "table2": ["size", "method"], "table3": ["size", "method",
        "activation_checkpointing"], "table4": ["size", "method"], "table5": ["schedule", "update_every_steps"]}
IN_PAPER = {REPLICATED: "holds", NOT_REPLICATED: "does not hold", NOT_MEASURED: "no published data"}
VALUES = {"table3": ["memory_gb", "seconds_per_step"], "table4": ["lr", "r", "lambda"], "table5": ["mmlu", "tydiqa"]}


@dataclass
class Tables:
    """One side of the audit: Tables 1–5 (absent ones None), Figure 2's data, cell standard errors."""

    frames: dict[str, pd.DataFrame | None]
    figure2: pd.DataFrame | None = None
    stderr: dict[str, float] = field(default_factory=dict)
    """``table/size/method/column`` → standard error of that cell's evaluation (ours only)."""
    ranks: dict[str, list[int]] = field(default_factory=dict)
    """``size/method`` → the ranks the search tried (from Table 4's selection files)."""

    @classmethod
    def load(cls, folder: str | Path, figure2: str | Path | None = None) -> Tables:
        folder = Path(folder)
        if not folder.is_dir() or not any((folder / f"{name}.csv").exists() for name in KEYS):
            raise FileNotFoundError(f"{folder}: " + ("no such folder" if not folder.is_dir() else
                                                     f"holds none of {', '.join(KEYS)} (.csv)"))
        frames: dict[str, pd.DataFrame | None] = {}
        stderr: dict[str, float] = {}
        for name in KEYS:
            path = folder / f"{name}.csv"
            frames[name] = pd.read_csv(path, dtype={"activation_checkpointing": str}) if path.exists() else None
            if name in ("table1", "table2"):
                for key, evaluation in _sources(folder, name):
                    stderr[f"{name}/{key}"] = read_result(evaluation, key.rsplit("_", 1)[1])["stderr"]
        ranks = {key: list(json.loads(selection.read_text())["grid"].get("rank", []))
                 for key, selection in _sources(folder, "table4")}
        data = None
        if figure2 is not None and Path(figure2).exists():
            data = pd.read_csv(figure2, index_col="step")
        return cls(frames, data, stderr, ranks)

    def cell(self, table: str, size: str, method: str, column: str, **match: str) -> float | None:
        """The value of ``column`` in the row of ``size`` and ``method`` (and ``match``: further key columns,
        compared case-insensitively, e.g. Table 3's ``activation_checkpointing="false"``); None if absent."""
        frame = self.frames.get(table)
        if frame is None or column not in frame:
            return None
        rows = (frame["size"].astype(str) == size) & (frame["method"] == method)
        for key, value in match.items():
            rows &= frame[key].astype(str).str.lower() == value
        values = frame[rows][column]
        return None if values.empty or pd.isna(values.iloc[0]) else float(values.iloc[0])

    def sizes(self, table: str) -> list[str]:
        frame = self.frames.get(table)
        return [] if frame is None else list(dict.fromkeys(frame["size"].astype(str)))


def _sources(folder: Path, table: str) -> list[tuple[str, Path]]:
    """(key, file) for every source named in ``folder/<table>.json`` that exists (relative paths are relative
    to the run's working directory, the results folder's parent)."""
    record = folder / f"{table}.json"
    if not record.exists():
        return []
    pairs = [(key, Path(file) if Path(file).is_absolute() else folder.parent / file)
             for key, file in json.loads(record.read_text()).get("sources", {}).items()]
    return [(key, path) for key, path in pairs if path.exists()]


@dataclass
class Check:
    """One comparison behind a claim (e.g. at one size)."""

    holds: bool
    evidence: str
    within_stderr: bool | None = None


@dataclass(frozen=True)
class Claim:
    name: str
    source: str
    statement: str
    tables: tuple[str, ...]
    checks: Callable[[Tables], list[Check]]


def _at_least(tables: Tables, table: str, column: str, better: str, worse: str) -> list[Check]:
    """``better`` ≥ ``worse`` on ``column`` at each size where both exist."""
    out = []
    for size in tables.sizes(table):
        a, b = tables.cell(table, size, better, column), tables.cell(table, size, worse, column)
        if a is None or b is None:
            continue
        errors = [tables.stderr.get(f"{table}/{size}/{m}/{column}") for m in (better, worse)]
        noise = math.hypot(*errors) if all(e is not None for e in errors) else None
        within = None if noise is None else abs(a - b) <= noise
        note = "" if noise is None else f" (±{noise:.1f})"
        out.append(Check(a >= b, f"{size} {column}: {better} {a:g} vs {worse} {b:g}{note}", within))
    return out


def _majority(tables: Tables, better: str, worse: str) -> list[Check]:
    out = []
    for size in tables.sizes("table1"):
        frame = tables.frames["table1"]
        columns = [c for c in frame.columns[2:] if c != "note"]
        pairs = [(tables.cell("table1", size, better, c), tables.cell("table1", size, worse, c)) for c in columns]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if pairs:
            wins = sum(a >= b for a, b in pairs)
            out.append(Check(wins * 2 > len(pairs), f"{size}: {better} ≥ {worse} on {wins} of {len(pairs)} columns"))
    return out


def _quantization_modest(tables: Tables, points: float = 3.0) -> list[Check]:
    out = []
    for full, quantized in (("LoRA", "qLoRA"), ("SpIEL-AG", "qSpIEL-AG"), ("SpIEL-MA", "qSpIEL-MA")):
        for size in tables.sizes("table2"):
            a, b = tables.cell("table1", size, full, "flan_mmlu"), tables.cell("table2", size, quantized, "flan_mmlu")
            if a is not None and b is not None:
                out.append(Check(a - b <= points, f"{size} Flan v2 MMLU: {full} {a:g} vs {quantized} {b:g}"))
    return out


def _composition(tables: Tables) -> list[Check]:
    out = []
    for size in tables.sizes("table1"):
        for name in ("LoRA", "SpIEL-AG", "SpIEL-MA"):
            composed = tables.cell("table1", size, name, "tulu_plus_alpaca_humaneval")
            single = [tables.cell("table1", size, name, c) for c in ("alpaca_humaneval", "tulu_humaneval")]
            if composed is not None and None not in single:
                out.append(Check(composed > max(single), f"{size} {name}: composed {composed:g} vs GPT4-Alpaca "
                                                         f"{single[0]:g}, Tülu v2 {single[1]:g}"))
    return out


def _memory(tables: Tables, a: str, b: str, checkpointing: str, column: str = "memory_gb",
            strict: bool = True) -> list[Check]:
    """``a`` below (or, not ``strict``, at most) ``b`` in Table 3's ``column``."""
    out = []
    for size in tables.sizes("table3"):
        x, y = (tables.cell("table3", size, m, column, activation_checkpointing=checkpointing) for m in (a, b))
        if x is not None and y is not None:
            holds = x < y if strict else x <= y
            out.append(Check(holds, f"{size} ckpt={checkpointing} {column}: {a} {x:g} vs {b} {y:g}"))
    return out


def _checkpointing_saves_lora_more(tables: Tables) -> list[Check]:
    out = []
    for size in tables.sizes("table3"):
        saved = {}
        for name in ("LoRA", "SpIEL-AG", "SpIEL-MA"):
            off, on = (tables.cell("table3", size, name, "memory_gb", activation_checkpointing=flag)
                       for flag in ("false", "true"))
            if off is not None and on is not None:
                saved[name] = off - on
        if "LoRA" in saved and len(saved) > 1:
            others = {k: v for k, v in saved.items() if k != "LoRA"}
            out.append(Check(all(saved["LoRA"] > v for v in others.values()),
                             f"{size}: saved GB LoRA {saved['LoRA']:.3g}, "
                             + ", ".join(f"{k} {v:.3g}" for k, v in others.items())))
    return out


def _quantization_saves_memory(tables: Tables) -> list[Check]:
    return [c for full, q in (("LoRA", "qLoRA"), ("SpIEL-AG", "qSpIEL-AG"), ("SpIEL-MA", "qSpIEL-MA"))
            for flag in ("false", "true") for c in _memory(tables, q, full, flag)]


def _late_growth(tables: Tables) -> list[Check]:
    """Share of indices grown in the second half of training (up to the last update): SpIEL-MA < SpIEL-AG."""
    data = tables.figure2
    if data is None:
        return []
    out = []
    horizon = data.index.max()
    for column in [c for c in data.columns if c.startswith("SpIEL-AG ")]:
        size = column.split(" ", 1)[1]
        other = f"SpIEL-MA {size}"
        if other in data:
            late = {c: float(data.loc[data.index > horizon / 2, c].sum()) for c in (column, other)}
            out.append(Check(late[other] < late[column], f"{size}: indices grown after step {horizon / 2:g}: "
                                                         f"SpIEL-MA {late[other]:.3f} vs SpIEL-AG {late[column]:.3f}"))
    return out


PAPER_RANKS = [8, 16, 32, 64]
"""App. D's rank grid (the published Table 4 has no selection files)."""


def _largest_rank(tables: Tables) -> list[Check]:
    """Selected r = the largest rank searched; a search over a single rank decides nothing (skipped)."""
    frame = tables.frames.get("table4")
    if frame is None:
        return []
    out = []
    for row in frame[frame["r"].notna()].itertuples(index=False):
        searched = tables.ranks.get(f"{row.size}/{row.method}", PAPER_RANKS if not tables.ranks else [])
        if len(searched) > 1:
            out.append(Check(float(row.r) == max(searched), f"{row.size} {row.method}: r = {row.r:g} of {searched}"))
    return out


CLAIMS = [
    Claim("spiel_ag_beats_lora_flan_mmlu", "§5.1", "SpIEL-AG scores at least LoRA's Flan v2 MMLU at each size",
          ("table1",), lambda t: _at_least(t, "table1", "flan_mmlu", "SpIEL-AG", "LoRA")),
    Claim("spiel_ag_beats_lora_mostly", "§5.1", "SpIEL-AG scores at least LoRA's on most Table 1 columns at each size",
          ("table1",), lambda t: _majority(t, "SpIEL-AG", "LoRA")),
    Claim("spiel_ag_beats_ia3_mostly", "§5.1",
          "SpIEL-AG scores at least (IA)3's on most Table 1 columns at each size",
          ("table1",), lambda t: _majority(t, "SpIEL-AG", "(IA)3")),
    Claim("composition_raises_humaneval", "§5.1 Compositionality",
          "Composing the Tülu v2 and GPT4-Alpaca adapters raises HumanEval above both single adapters, for LoRA "
          "and SpIEL at each size", ("table1",), _composition),
    Claim("qspiel_ag_beats_qlora", "§5.1 Quantization", "qSpIEL-AG scores at least qLoRA's on every Table 2 column",
          ("table2",), lambda t: [c for col in ("flan_mmlu", "flan_tydiqa", "alpaca_humaneval")
                                  for c in _at_least(t, "table2", col, "qSpIEL-AG", "qLoRA")]),
    Claim("quantization_modest", "§5.1 Quantization",
          "4-bit quantization costs at most 3 points of Flan v2 MMLU for each PEFT method", ("table1", "table2"),
          _quantization_modest),
    Claim("spiel_ma_less_memory_than_lora", "§5.2",
          "Without activation checkpointing, SpIEL-MA needs less memory than LoRA", ("table3",),
          lambda t: _memory(t, "SpIEL-MA", "LoRA", "false")),
    Claim("spiel_ag_less_memory_than_lora", "§5.2",
          "Without activation checkpointing, SpIEL-AG needs less memory than LoRA", ("table3",),
          lambda t: _memory(t, "SpIEL-AG", "LoRA", "false")),
    Claim("checkpointing_helps_lora_most", "§5.2",
          "Activation checkpointing cuts LoRA's memory by more than SpIEL's", ("table3",),
          _checkpointing_saves_lora_more),
    Claim("spiel_ma_leaner_than_ag", "§5.2", "SpIEL-MA is faster than SpIEL-AG and needs no more memory",
          ("table3",), lambda t: [c for flag in ("false", "true") for c in
                                  _memory(t, "SpIEL-MA", "SpIEL-AG", flag, "seconds_per_step")
                                  + _memory(t, "SpIEL-MA", "SpIEL-AG", flag, strict=False)]),
    Claim("quantization_saves_memory", "§5.2", "Each quantized method needs less memory than its 16/32-bit version",
          ("table3",), _quantization_saves_memory),
    Claim("spiel_ma_grows_fewer_late", "§5.3", "SpIEL-MA grows fewer indices late in training than SpIEL-AG",
          ("figure2",), _late_growth),
    Claim("search_picks_largest_rank", "App. D", "The search selects the largest rank for LoRA and SpIEL",
          ("table4",), _largest_rank),
]


def verdict(checks: list[Check]) -> str:
    if not checks:
        return NOT_MEASURED
    return REPLICATED if all(c.holds for c in checks) else NOT_REPLICATED


def claims(ours: Tables, paper: Tables) -> pd.DataFrame:
    """One row per claim: verdict in this run, whether it holds in the paper's tables, and the evidence."""
    rows = []
    for claim in CLAIMS:
        mine, theirs = claim.checks(ours), claim.checks(paper)
        within = [c.within_stderr for c in mine if c.within_stderr is not None]
        rows.append({"claim": claim.name, "source": claim.source, "statement": claim.statement,
                     "verdict": verdict(mine), "in_paper": IN_PAPER[verdict(theirs)],
                     "within_stderr": None if not within else f"{sum(within)} of {len(within)} comparisons",
                     "evidence": "; ".join(c.evidence for c in mine),
                     "paper_evidence": "; ".join(c.evidence for c in theirs), "tables": " ".join(claim.tables)})
    return pd.DataFrame(rows)


def cells(ours: Tables, paper: Tables, sizes: dict[str, str]) -> pd.DataFrame:
    """Every cell of our tables beside the paper's (our size → the paper's size it is put beside)."""
    rows = []
    for table, keys in KEYS.items():
        mine, theirs = ours.frames.get(table), paper.frames.get(table)
        if mine is None or theirs is None:
            continue
        columns = VALUES.get(table) or [c for c in mine.columns[2:] if c in theirs.columns]
        for record in mine.to_dict("records"):
            ours_key = [str(record[key]) for key in keys]
            paper_key = [sizes.get(v, v) if key == "size" else v for key, v in zip(keys, ours_key, strict=True)]
            match = theirs
            for key, value in zip(keys, paper_key, strict=True):
                match = match[match[key].astype(str).str.lower() == value.lower()]
            for column in columns:
                ours_value = record.get(column)
                paper_value = None if match.empty else match.iloc[0][column]
                rows.append({"table": table, "row": " / ".join(ours_key),
                             "paper_row": "" if match.empty else " / ".join(paper_key),
                             "column": column, "ours": ours_value, "paper": paper_value,
                             "difference": _difference(ours_value, paper_value)})
    return pd.DataFrame(rows, columns=["table", "row", "paper_row", "column", "ours", "paper", "difference"])


def _difference(ours, paper):
    try:
        a, b = float(ours), float(paper)
    except (TypeError, ValueError):
        return None
    if math.isnan(a) or math.isnan(b):
        return None
    return round(a - b, 3)


def markdown(cell_frame: pd.DataFrame, claim_frame: pd.DataFrame, sizes: dict[str, str],
             provenance: dict) -> str:
    lines = ["# Replication audit", "",
             f"Run: commit `{provenance.get('git_commit')}`, "
             f"config sha256 `{provenance.get('config_sha256', '')[:12]}`, "
             f"device {provenance.get('device')}, seed {provenance.get('seed')}.", ""]
    if any(k != v for k, v in sizes.items()):
        lines += ["Sizes put beside the paper's: " + ", ".join(f"{k} → {v}" for k, v in sizes.items())
                  + " (a different model: differences are not replication errors).", ""]
    lines += ["## The paper's claims", "", "| Claim | Source | Verdict | In the paper | Within stderr | Evidence |",
              "|---|---|---|---|---|---|"]
    for row in claim_frame.itertuples(index=False):
        lines.append(f"| {row.statement} | {row.source} | **{row.verdict}** | {row.in_paper} | "
                     f"{'' if pd.isna(row.within_stderr) else row.within_stderr} | {row.evidence} |")
    for table, group in cell_frame.groupby("table", sort=False):
        lines += ["", f"## {table.replace('table', 'Table ')}", "",
                  "| Ours | Paper's row | Column | Ours | Paper | Δ |", "|---|---|---|---|---|---|"]
        for row in group.itertuples(index=False):
            lines.append(f"| {row.row} | {row.paper_row} | {row.column} | {_fmt(row.ours)} | {_fmt(row.paper)} | "
                         f"{_fmt(row.difference)} |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)
