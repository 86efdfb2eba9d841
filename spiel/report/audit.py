"""The replication audit: our tables beside the paper's, cell by cell, and the paper's claims decided.

Each claim of §5 (and App. C–D) is an *effect* with a direction: e.g. "SpIEL-AG ≥ LoRA on Flan v2 MMLU" is the
score difference SpIEL-AG − LoRA, claimed ≥ 0. A claim spanning several sizes, columns or methods pools its
comparisons as their mean. The same function runs over the paper's tables (``config/paper_results``: the
published effect, and whether the claim holds in the published numbers) and over ours, where the evidence
behind each number gives the effect its noise (``spiel.report.stats``):

- benchmark scores: the per-item scores in the evaluation files, paired item by item (every method is scored on
  the same items) — a bootstrap interval and an exact or sign-flip p-value;
- memory (Table 3): the binary search's bracket, the highest limit that ran out of memory to the lowest that
  passed — an interval, significant when it excludes the margin;
- step time: the passing probe's per-step times — a bootstrap over steps.

A verdict is *replicated* (significant in the paper's direction), *contradicted* (significant against it),
*inconclusive* (neither, or one run with no spread to judge by) or *not measured* (a table or row is missing).
An inconclusive claim says the smallest effect this run could detect and about how many items would detect the
published one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluate.run import MACRO
from . import stats
from .stats import CONTRADICTED, INCONCLUSIVE, NOT_MEASURED, REPLICATED, Estimate, Stratum
from .tables import memory_bracket, step_seconds

KEYS = {"table1": ["size", "method"], "table1x": ["size", "method"], "table2": ["size", "method"],
        "table3": ["size", "method", "activation_checkpointing"], "table4": ["size", "method"],
        "table5": ["schedule", "update_every_steps"]}
VALUES = {"table3": ["memory_gb", "seconds_per_step"], "table4": ["lr", "r", "lambda"], "table5": ["mmlu", "tydiqa"]}
VERDICTS = (REPLICATED, CONTRADICTED, INCONCLUSIVE, NOT_MEASURED)
PAPER_RANKS = [8, 16, 32, 64]
"""App. D's rank grid (the published Table 4 has no selection files)."""

Items = dict[tuple[str, int, str], float]
"""(group, doc_id, digest of the prompt) → the item's score in points: two files pair only on the same prompts."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Tables:
    """One side of the audit: Tables 1–5 (absent ones None), Figure 2's data, and the files behind each cell
    (``sources``: table → key → file, as the table's JSON record names them; the paper's tables have none)."""

    frames: dict[str, pd.DataFrame | None]
    figure2: pd.DataFrame | None = None
    sources: dict[str, dict[str, list[Path]]] = field(default_factory=dict)
    root: Path = Path(".")
    """The run's working directory, against which the records' relative paths resolve."""
    _items: dict[Path, tuple[str, Items]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, folder: str | Path, figure2: str | Path | None = None) -> Tables:
        folder = Path(folder)
        if not folder.is_dir() or not any((folder / f"{name}.csv").exists() for name in KEYS):
            raise FileNotFoundError(f"{folder}: " + ("no such folder" if not folder.is_dir() else
                                                     f"holds none of {', '.join(KEYS)} (.csv)"))
        frames: dict[str, pd.DataFrame | None] = {}
        for name in KEYS:
            path = folder / f"{name}.csv"
            frames[name] = pd.read_csv(path, dtype={"activation_checkpointing": str}) if path.exists() else None
        sources = {name: dict(_sources(folder, name)) for name in KEYS}
        data = None
        if figure2 is not None and Path(figure2).exists():
            data = pd.read_csv(figure2, index_col="step")
        return cls(frames, data, sources, folder.parent)

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

    def items(self, path: Path) -> tuple[str, Items]:
        """(benchmark, per-item scores in points) of an evaluation file."""
        if path not in self._items:
            record = json.loads(path.read_text())
            scores = {(s["group"], int(s["doc_id"]), _digest(s["prompt"])): 100 * float(s["score"])
                      for s in record["samples"]}
            self._items[path] = record["benchmark"], scores
        return self._items[path]

    def record(self, table: str, key: str) -> dict | None:
        """The JSON record behind ``key`` of ``table`` (a memory result, a search selection); None if none."""
        paths = self.sources.get(table, {}).get(key)
        return None if not paths else json.loads(paths[0].read_text())


def _sources(folder: Path, table: str) -> list[tuple[str, list[Path]]]:
    """(key, files) for every source named in ``folder/<table>.json`` whose files exist (a file, or one per seed;
    relative paths are relative to the run's working directory, the results folder's parent)."""
    record = folder / f"{table}.json"
    if not record.exists():
        return []
    named = json.loads(record.read_text()).get("sources", {})
    pairs = [(key, [_resolve(folder.parent, f) for f in ([files] if isinstance(files, str) else files)])
             for key, files in named.items()]
    return [(key, paths) for key, paths in pairs if paths and all(p.exists() for p in paths)]


def _resolve(root: Path, file: str) -> Path:
    return Path(file) if Path(file).is_absolute() else root / file


@dataclass
class Evidence:
    """What a claim's comparisons show on one side: the effect from the tables' numbers, with the estimate
    (interval, p-value) where the files behind them give it noise."""

    effect: float | None
    text: str
    estimate: Estimate | None = None
    holds: bool | None = None
    """Whether the numbers lie on the claim's side (the published tables: "holds"), when not the effect's sign."""


@dataclass(frozen=True)
class Claim:
    name: str
    source: str
    statement: str
    tables: tuple[str, ...]
    measure: Callable[[Tables], Evidence | None]
    direction: int = 1
    """+1: the paper says the effect is above ``margin``; −1: below it."""
    margin: float = 0.0
    unit: str = "points"
    samples: str = "items"
    """What the statistics resample (items; steps for step time; seeds for Figure 2)."""

    def holds(self, evidence: Evidence) -> bool:
        if evidence.holds is not None:
            return evidence.holds
        return (evidence.effect - self.margin) * self.direction >= 0


@dataclass(frozen=True)
class Ref:
    """One cell of Table 1 or 2."""

    table: str
    size: str
    method: str
    column: str

    def value(self, tables: Tables) -> float | None:
        return tables.cell(self.table, self.size, self.method, self.column)

    def paths(self, tables: Tables) -> list[Path] | None:
        """The cell's evaluation files, one per seed; None where the table names none."""
        return tables.sources.get(self.table, {}).get(f"{self.size}/{self.method}/{self.column}")


def scores(tables: Tables, pairs: list[tuple[Ref, Ref]], margin: float = 0.0, note: str = "") -> Evidence | None:
    """The mean of the score differences a − b over ``pairs`` (those with both cells), paired item by item where
    both evaluation files are at hand."""
    kept = [(a, b, a.value(tables), b.value(tables)) for a, b in pairs]
    kept = [(a, b, x, y) for a, b, x, y in kept if x is not None and y is not None]
    if not kept:
        return None
    text = "; ".join(f"{a.size} {a.column}: {a.method} {x:g} vs " + (f"{b.column} " if b.column != a.column else "")
                     + f"{b.method} {y:g}" for a, b, x, y in kept)
    files = [(a.paths(tables), b.paths(tables)) for a, b, _, _ in kept]
    estimate = None
    if all(p is not None and q is not None for p, q in files):
        strata = [s for p, q in files for s in paired_strata(tables, p, q, 1 / len(files))]
        estimate = stats.estimate(strata, margin)
    return Evidence(float(np.mean([x - y for _, _, x, y in kept])), text + note, estimate)


def paired_strata(tables: Tables, a: list[Path], b: list[Path], weight: float) -> list[Stratum]:
    """The per-item scores of cells a and b (their evaluation files, one per seed) on one benchmark, one stratum
    per group weighted as the benchmark's score weighs it (× ``weight``). Files not scored on the same items are an
    error naming them."""
    runs = [tables.items(path) for path in (*a, *b)]
    benchmark, reference = runs[0]
    for path, (other, scores) in zip((*a, *b), runs, strict=True):
        if other != benchmark or set(scores) != set(reference):
            raise ValueError(f"{a[0]} and {path}: not scored on the same items ({benchmark}: {len(reference)}, "
                             f"{other}: {len(scores)}); rerun their evaluations with one protocol")
    groups = sorted({k[0] for k in reference})
    members = {group: sorted(k for k in reference if k[0] == group) for group in groups}
    # A group of one item cannot be resampled within itself (its interval would have no width): such groups pool
    # into one stratum. They weigh alike (1/groups or 1/items), so the effect is unchanged.
    single = [key for group in groups if len(members[group]) == 1 for key in members[group]]
    blocks = [members[group] for group in groups if len(members[group]) > 1] + ([single] if single else [])
    strata = []
    for keys in blocks:
        share = (len(keys) if keys is single else 1) / len(groups) if benchmark in MACRO \
            else len(keys) / len(reference)
        matrices = [np.array([[scores[k] for k in keys] for _, scores in side])
                    for side in (runs[:len(a)], runs[len(a):])]
        strata.append(Stratum(matrices[0], weight * share, matrices[1]))
    return strata


def _at_least(table: str, columns: list[str], better: str, worse: str) -> Callable[[Tables], Evidence | None]:
    """``better`` − ``worse`` on ``columns`` of ``table``, pooled over columns and sizes."""
    def measure(tables: Tables) -> Evidence | None:
        return scores(tables, [(Ref(table, size, better, c), Ref(table, size, worse, c))
                               for size in tables.sizes(table) for c in columns])
    return measure


def _score_columns(tables: Tables, table: str) -> list[str]:
    frame = tables.frames.get(table)
    return [] if frame is None else [c for c in frame.columns[2:] if c != "note"]


def _majority(better: str, worse: str, table: str = "table1") -> Callable[[Tables], Evidence | None]:
    """``better`` − ``worse`` over every column and size of ``table`` (the columns won are in the evidence)."""
    def measure(tables: Tables) -> Evidence | None:
        pairs = [(Ref(table, size, better, c), Ref(table, size, worse, c))
                 for size in tables.sizes(table) for c in _score_columns(tables, table)]
        values = [(a.value(tables), b.value(tables)) for a, b in pairs]
        values = [(x, y) for x, y in values if x is not None and y is not None]
        wins = sum(x >= y for x, y in values)
        return scores(tables, pairs, note=f" ({better} ≥ {worse} on {wins} of {len(values)} cells)")
    return measure


def _composition(tables: Tables) -> Evidence | None:
    """Composed − the better single adapter's HumanEval, per size and method."""
    pairs = []
    for size in tables.sizes("table1"):
        for name in ("LoRA", "SpIEL-AG", "SpIEL-MA"):
            composed = Ref("table1", size, name, "tulu_plus_alpaca_humaneval")
            single = [Ref("table1", size, name, c) for c in ("alpaca_humaneval", "tulu_humaneval")]
            values = [r.value(tables) for r in single]
            if composed.value(tables) is not None and None not in values:
                pairs.append((composed, single[int(values[1] > values[0])]))
    return scores(tables, pairs)


def _quantization_cost(tables: Tables) -> Evidence | None:
    """Full-precision − 4-bit Flan v2 MMLU per PEFT method and size (claimed ≤ 3 points)."""
    pairs = [(Ref("table1", size, full, "flan_mmlu"), Ref("table2", size, quantized, "flan_mmlu"))
             for full, quantized in (("LoRA", "qLoRA"), ("SpIEL-AG", "qSpIEL-AG"), ("SpIEL-MA", "qSpIEL-MA"))
             for size in tables.sizes("table2")]
    return scores(tables, pairs, margin=3.0)


Terms = dict[tuple[str, str, str], float]
"""(size, method label, activation checkpointing "true"/"false") → coefficient: one comparison of Table 3."""


def _table3(tables: Tables, comparisons: list[Terms], column: str, margin: float = 0.0) -> Evidence | None:
    """The mean over ``comparisons`` of Σ coefficient · ``column``: memory with the searches' brackets as its
    interval, step time with a bootstrap over each run's per-step times."""
    def value(key):
        size, name, flag = key
        return tables.cell("table3", size, name, column, activation_checkpointing=flag)

    kept = [terms for terms in comparisons if all(value(k) is not None for k in terms)]
    if not kept:
        return None
    effect = float(np.mean([sum(c * value(k) for k, c in terms.items()) for terms in kept]))
    text = "; ".join(f"{next(iter(terms))[0]}: " + " ".join(
        f"{'+' if c > 0 else '−'} {name}{' (ckpt)' if flag == 'true' else ''} {value(k):g}"
        for k, c in terms.items() for _, name, flag in [k]).removeprefix("+ ") for terms in kept)
    records = [{k: tables.record("table3", "/".join(k)) for k in terms} for terms in kept]
    if any(r is None for terms in records for r in terms.values()):
        return Evidence(effect, f"{column}: {text}")
    if column == "memory_gb":
        brackets = [{k: memory_bracket(r) for k, r in terms.items()} for terms in records]
        if any(b is None for terms in brackets for b in terms.values()):
            return Evidence(effect, f"{column}: {text}")
        low = np.mean([sum(c * b[k][0 if c > 0 else 1] for k, c in terms.items())
                       for terms, b in zip(kept, brackets, strict=True)])
        high = np.mean([sum(c * b[k][1 if c > 0 else 0] for k, c in terms.items())
                        for terms, b in zip(kept, brackets, strict=True)])
        estimate = stats.interval(float(low), float(high), effect, len(kept))
    else:
        if any(sorted(terms.values()) != [-1.0, 1.0] for terms in kept):
            return Evidence(effect, f"{column}: {text}")  # step times compare two runs at a time
        strata = []
        for terms, runs in zip(kept, records, strict=True):
            (plus,), (minus,) = ([k for k, c in terms.items() if c * sign > 0] for sign in (1, -1))
            strata.append(Stratum(np.array(step_seconds(runs[plus])), 1 / len(kept),
                                  np.array(step_seconds(runs[minus])), paired=False))
        estimate = stats.estimate(strata, margin) if all(s.a.size and s.b.size for s in strata) else None
    return Evidence(effect, f"{column}: {text}", estimate)


def _less(a: str, b: str, column: str = "memory_gb", flags: tuple[str, ...] = ("false",)
          ) -> Callable[[Tables], Evidence | None]:
    """``a`` − ``b`` in Table 3's ``column`` at each size and checkpointing flag of ``flags``."""
    def measure(tables: Tables) -> Evidence | None:
        return _table3(tables, [{(s, a, f): 1.0, (s, b, f): -1.0} for s in tables.sizes("table3") for f in flags],
                       column)
    return measure


def _checkpointing_saves_lora_more(tables: Tables) -> Evidence | None:
    """LoRA's memory saved by checkpointing − SpIEL's, per size and SpIEL method."""
    comparisons = [{(s, "LoRA", "false"): 1.0, (s, "LoRA", "true"): -1.0, (s, name, "false"): -1.0,
                    (s, name, "true"): 1.0} for s in tables.sizes("table3") for name in ("SpIEL-AG", "SpIEL-MA")]
    return _table3(tables, comparisons, "memory_gb")


def _quantization_saves_memory(tables: Tables) -> Evidence | None:
    comparisons = [{(s, q, f): 1.0, (s, full, f): -1.0} for s in tables.sizes("table3") for f in ("false", "true")
                   for full, q in (("LoRA", "qLoRA"), ("SpIEL-AG", "qSpIEL-AG"), ("SpIEL-MA", "qSpIEL-MA"))]
    return _table3(tables, comparisons, "memory_gb")


def _late_growth(tables: Tables) -> Evidence | None:
    """Share of indices grown in the second half of training (up to the last update): SpIEL-MA − SpIEL-AG, with a
    bootstrap over training seeds where Figure 2's data has each seed's run (columns ``LABEL #i``); one run gives
    no spread."""
    data = tables.figure2
    if data is None:
        return None
    horizon = data.index.max()

    def late(column: str) -> float:
        return float(data.loc[data.index > horizon / 2, column].sum())

    pairs = [(c, f"SpIEL-MA {c.split(' ', 1)[1]}") for c in data.columns if c.startswith("SpIEL-AG ") and "#" not in c]
    pairs = [(ag, ma) for ag, ma in pairs if ma in data]
    if not pairs:
        return None
    text = "; ".join(f"{ag.split(' ', 1)[1]}: indices grown after step {horizon / 2:g}: SpIEL-MA {late(ma):.3f} vs "
                     f"SpIEL-AG {late(ag):.3f}" for ag, ma in pairs)
    effect = float(np.mean([late(ma) - late(ag) for ag, ma in pairs]))
    runs = {c: [late(r) for r in data.columns if r.startswith(f"{c} #")] for pair in pairs for c in pair}
    if any(len(v) < 2 for v in runs.values()):
        return Evidence(effect, text)
    strata = [Stratum(np.array(runs[ma]), 1 / len(pairs), np.array(runs[ag]), paired=False) for ag, ma in pairs]
    return Evidence(effect, text + f" (mean of {min(map(len, runs.values()))} seeds)", stats.estimate(strata))


def _largest_rank(tables: Tables) -> Evidence | None:
    """MMLU dev of the best point at the largest rank searched − the best at any smaller rank, from the search's
    own evaluations (the published Table 4 gives only the selected r: whether it is the largest of App. D's)."""
    frame = tables.frames.get("table4")
    if frame is None:
        return None
    rows = [row for row in frame[frame["r"].notna()].itertuples(index=False) if row.method in RANKED]
    if not tables.sources.get("table4"):
        checks = [float(row.r) == max(PAPER_RANKS) for row in rows]
        text = "; ".join(f"{row.size} {row.method}: r = {row.r:g} of {PAPER_RANKS}" for row in rows)
        return Evidence(None, text, holds=all(checks)) if rows else None
    strata, differences, text, checks = [], [], [], []
    for row in rows:
        record = tables.record("table4", f"{row.size}/{row.method}")
        ranked = [p for p in record["points"] if p.get("rank") is not None] if record else []
        ranks = sorted({p["rank"] for p in ranked})
        if len(ranks) < 2:
            continue  # a search over one rank decides nothing
        top = max((p for p in ranked if p["rank"] == ranks[-1]), key=lambda p: p["score"])
        rest = max((p for p in ranked if p["rank"] < ranks[-1]), key=lambda p: p["score"])
        differences.append(top["score"] - rest["score"])
        checks.append(float(row.r) == ranks[-1])
        text.append(f"{row.size} {row.method}: r = {row.r:g} of {ranks}; best at r = {ranks[-1]} {top['score']:g} "
                    f"vs r = {rest['rank']} {rest['score']:g}")
        strata.append(([_resolve(tables.root, top["file"])], [_resolve(tables.root, rest["file"])]))
    if not differences:
        return None
    pooled = [s for a, b in strata for s in paired_strata(tables, a, b, 1 / len(strata))]
    return Evidence(float(np.mean(differences)), "; ".join(text), stats.estimate(pooled), holds=all(checks))


TABLE2_COLUMNS = ["flan_mmlu", "flan_tydiqa", "alpaca_humaneval"]
RANKED = ("LoRA", "SpIEL-AG", "SpIEL-MA")
"""The methods of the App. D claim on the selected rank (not the static sparse baselines searched beyond it)."""
EXTENSION = "beyond the paper"
"""The source of claims the paper does not make (Table 1x's static sparse baselines): no published data."""

CLAIMS = [
    Claim("spiel_ag_beats_lora_flan_mmlu", "§5.1", "SpIEL-AG scores at least LoRA's Flan v2 MMLU at each size",
          ("table1",), _at_least("table1", ["flan_mmlu"], "SpIEL-AG", "LoRA")),
    Claim("spiel_ag_beats_lora_mostly", "§5.1", "SpIEL-AG scores at least LoRA's on most Table 1 columns at each size",
          ("table1",), _majority("SpIEL-AG", "LoRA")),
    Claim("spiel_ag_beats_ia3_mostly", "§5.1",
          "SpIEL-AG scores at least (IA)3's on most Table 1 columns at each size", ("table1",),
          _majority("SpIEL-AG", "(IA)3")),
    Claim("composition_raises_humaneval", "§5.1 Compositionality",
          "Composing the Tülu v2 and GPT4-Alpaca adapters raises HumanEval above both single adapters, for LoRA "
          "and SpIEL at each size", ("table1",), _composition),
    Claim("qspiel_ag_beats_qlora", "§5.1 Quantization",
          "qSpIEL-AG scores at least qLoRA's on every Table 2 column (of this run's)", ("table2",),
          _at_least("table2", TABLE2_COLUMNS, "qSpIEL-AG", "qLoRA")),
    Claim("quantization_modest", "§5.1 Quantization",
          "4-bit quantization costs at most 3 points of Flan v2 MMLU for each PEFT method", ("table1", "table2"),
          _quantization_cost, direction=-1, margin=3.0),
    Claim("spiel_ma_less_memory_than_lora", "§5.2",
          "Without activation checkpointing, SpIEL-MA needs less memory than LoRA", ("table3",),
          _less("SpIEL-MA", "LoRA"), direction=-1, unit="GB"),
    Claim("spiel_ag_less_memory_than_lora", "§5.2",
          "Without activation checkpointing, SpIEL-AG needs less memory than LoRA", ("table3",),
          _less("SpIEL-AG", "LoRA"), direction=-1, unit="GB"),
    Claim("checkpointing_helps_lora_most", "§5.2",
          "Activation checkpointing cuts LoRA's memory by more than SpIEL's", ("table3",),
          _checkpointing_saves_lora_more, unit="GB"),
    Claim("spiel_ma_faster_than_ag", "§5.2", "SpIEL-MA takes less time per step than SpIEL-AG", ("table3",),
          _less("SpIEL-MA", "SpIEL-AG", "seconds_per_step", ("false", "true")), direction=-1, unit="s/step",
          samples="steps"),
    Claim("spiel_ma_no_more_memory_than_ag", "§5.2", "SpIEL-MA needs no more memory than SpIEL-AG", ("table3",),
          _less("SpIEL-MA", "SpIEL-AG", "memory_gb", ("false", "true")), direction=-1, unit="GB"),
    Claim("quantization_saves_memory", "§5.2", "Each quantized method needs less memory than its 16/32-bit version",
          ("table3",), _quantization_saves_memory, direction=-1, unit="GB"),
    Claim("spiel_ma_grows_fewer_late", "§5.3", "SpIEL-MA grows fewer indices late in training than SpIEL-AG",
          ("figure2",), _late_growth, direction=-1, unit="share of indices", samples="seeds"),
    Claim("search_picks_largest_rank", "App. D", "The search selects the largest rank for LoRA and SpIEL",
          ("table4",), _largest_rank),
    # beyond the paper (issue 21): dynamic drop-and-grow against static sparsity at the same budget
    Claim("spiel_ag_beats_shira", EXTENSION, "SpIEL-AG scores at least SHiRA's (a fixed random mask) over "
          "Table 1x's columns", ("table1x",), _majority("SpIEL-AG", "SHiRA", "table1x")),
    Claim("spiel_ag_beats_supertuning", EXTENSION, "SpIEL-AG scores at least Super-Tuning's (fixed "
          "largest-magnitude support) over Table 1x's columns", ("table1x",),
          _majority("SpIEL-AG", "Super-Tuning", "table1x")),
    Claim("drop_and_grow_beats_fixed", EXTENSION, "Drop-and-grow (SpIEL-AG) scores at least SpIEL with η never "
          "reselected (SpIEL-fixed) over Table 1x's columns", ("table1x",),
          _majority("SpIEL-AG", "SpIEL-fixed", "table1x")),
]


def verdict(claim: Claim, evidence: Evidence | None) -> str:
    """Not measured without evidence; inconclusive without an estimate (no spread) or a significant effect."""
    if evidence is None:
        return NOT_MEASURED
    if evidence.estimate is None:
        return INCONCLUSIVE
    return stats.decide(evidence.estimate, claim.direction, claim.margin)


def _note(claim: Claim, evidence: Evidence | None, published: Evidence | None, outcome: str) -> str:
    """For an inconclusive claim: what this run could detect and about what would decide the published effect."""
    if outcome != INCONCLUSIVE:
        return ""
    estimate = evidence.estimate
    if estimate is None:
        return "one run: no spread to judge the difference by (needs repeated runs: seeds)"
    if estimate.test == stats.BRACKET:
        return (f"the search bracket [{estimate.low:+.3g}, {estimate.high:+.3g}] {claim.unit} spans {claim.margin:g}: "
                "a finer memory search step (memory.step_mb) would decide it")
    if estimate.se == 0:
        return f"no variation among the {estimate.n} {claim.samples}: this run cannot tell an effect from noise"
    note = f"smallest detectable effect ±{estimate.detectable:.3g} {claim.unit}"
    published_effect = None if published is None else published.effect
    needed = estimate.needed(published_effect, claim.margin)
    if needed is not None and (published_effect - claim.margin) * claim.direction > 0:
        note += f"; about {needed} {claim.samples} would detect the published {published_effect:+.3g}"
    return note


COLUMNS = ["claim", "source", "statement", "verdict", "unit", "direction", "margin", "effect", "ci_low", "ci_high",
           "p_value", "test", "n", "detectable", "published_effect", "in_paper", "note", "evidence", "paper_evidence",
           "tables"]


def claims(ours: Tables, paper: Tables) -> pd.DataFrame:
    """One row per claim: our verdict, effect, 95 % interval and p-value; the published effect and whether the
    claim holds in the published numbers; the evidence of each side."""
    rows = []
    for claim in CLAIMS:
        mine, theirs = claim.measure(ours), claim.measure(paper)
        outcome = verdict(claim, mine)
        estimate = None if mine is None else mine.estimate
        rows.append({
            "claim": claim.name, "source": claim.source, "statement": claim.statement, "verdict": outcome,
            "unit": claim.unit, "direction": claim.direction, "margin": claim.margin,
            "effect": None if mine is None else (estimate.effect if estimate else mine.effect),
            "ci_low": estimate and estimate.low, "ci_high": estimate and estimate.high,
            "p_value": estimate and estimate.p_value, "test": estimate and estimate.test, "n": estimate and estimate.n,
            "detectable": estimate and estimate.detectable,
            "published_effect": None if theirs is None else theirs.effect,
            "in_paper": "no published data" if theirs is None else
            ("holds" if claim.holds(theirs) else "does not hold"),
            "note": _note(claim, mine, theirs, outcome), "evidence": "" if mine is None else mine.text,
            "paper_evidence": "" if theirs is None else theirs.text, "tables": " ".join(claim.tables)})
    return pd.DataFrame(rows, columns=COLUMNS)


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
    lines += ["## The paper's claims", "",
              "Effect: the claim's difference pooled over its comparisons (mean), with its 95 % interval and "
              "p-value (paired over items for scores; the search bracket for memory; over steps for step time). "
              "*Replicated*: significant (p < 0.05, or a bracket on one side) in the paper's direction; "
              "*contradicted*: significant against it; *inconclusive*: neither.", "",
              "| Claim | Source | Verdict | Effect [95 % CI] | p | Published | In the paper | Note | Evidence |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in claim_frame.itertuples(index=False):
        effect = "" if pd.isna(row.effect) else f"{row.effect:+.3g} {row.unit}"
        if not pd.isna(row.ci_low):
            effect += f" [{row.ci_low:+.3g}, {row.ci_high:+.3g}]"
        lines.append(f"| {row.statement} | {row.source} | **{row.verdict}** | {effect} | {_fmt(row.p_value, '.3g')} | "
                     f"{_fmt(row.published_effect, '+.3g')} | {row.in_paper} | {row.note} | {row.evidence} |")
    for table, group in cell_frame.groupby("table", sort=False):
        lines += ["", f"## {table.replace('table', 'Table ')}", "",
                  "| Ours | Paper's row | Column | Ours | Paper | Δ |", "|---|---|---|---|---|---|"]
        for row in group.itertuples(index=False):
            lines.append(f"| {row.row} | {row.paper_row} | {row.column} | {_fmt(row.ours)} | {_fmt(row.paper)} | "
                         f"{_fmt(row.difference)} |")
    return "\n".join(lines) + "\n"


def _fmt(value, spec: str = "g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return format(value, spec) if isinstance(value, float) else str(value)
