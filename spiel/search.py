"""The hyperparameter search of App. D: grid points, selection, and the Table 4 / Figure 4 data.

Stage 1 trains every learning rate × rank (learning rate only for (IA)3) on Flan v2 and scores 5-shot MMLU dev.
For SpIEL, stage 2 then searches the weight decay λ at ``lambda_rank`` (r = 64 in the paper) with the learning
rate that scored best in stage 1 at that rank. Stage 1 trains SpIEL with the first λ of the grid, so stage 2
trains only the other λ values; the stage-1 point at (best lr, ``lambda_rank``) is the first λ's point.

Ties are broken by grid order: of equally scored points the one listed first (stage 1 before stage 2; within a
stage, learning rates in the config's order, each with ranks in the config's order) is selected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SEARCHED = ("ia3", "lora", "spiel-ag", "spiel-ma", "shira", "supertuning", "spiel-fixed")
"""Methods with a grid (Full FT keeps Wang et al.'s 2e-5, App. D)."""
COUNTERPART = {"qlora": "lora", "qspiel-ag": "spiel-ag", "qspiel-ma": "spiel-ma"}
"""4-bit methods train with their full-precision counterpart's selection (§4: one setting per PEFT method)."""


def searched_as(name: str) -> str:
    """The method whose search result ``name`` uses (itself, or its full-precision counterpart)."""
    return COUNTERPART.get(name, name)


def sci(value: float) -> str:
    """A number as the paper writes it: 3e-4, 2.5e-5, 0 (also used in point labels)."""
    if value == 0 or 1e-2 <= abs(value) < 1e4:
        return f"{value:g}"
    return np.format_float_scientific(value, trim="-", exp_digits=1)


@dataclass(frozen=True)
class Point:
    """One grid point: its label (a path component), stage, and the hyperparameters it sets."""

    label: str
    stage: int
    hp: dict[str, Any]


def lambda_rank(grid: dict[str, Any]) -> int | None:
    """The rank at which λ is searched (config ``lambda_rank``, default the largest rank)."""
    if not grid.get("weight_decay"):
        return None
    return int(grid.get("lambda_rank", max(grid.get("rank", [0]))))


def points(grid: dict[str, Any]) -> list[Point]:
    """Every training point of one method's grid, in grid order. Stage-2 points carry rank and λ only: their
    learning rate is stage 1's selection, known once stage 1 is scored."""
    decays = list(grid.get("weight_decay", []))
    ranks = list(grid.get("rank", [None]))
    if decays and lambda_rank(grid) not in ranks:
        raise ValueError(f"lambda_rank {lambda_rank(grid)} is not among the grid's ranks {ranks}")
    out = []
    for lr in grid["lr"]:
        for rank in ranks:
            hp: dict[str, Any] = {"lr": lr}
            label = f"lr{sci(lr)}"
            if rank is not None:
                hp["rank"] = rank
                label += f"-r{rank}"
            if decays:
                hp["weight_decay"] = decays[0]
            out.append(Point(label, 1, hp))
    out += [Point(f"wd{sci(wd)}", 2, {"rank": lambda_rank(grid), "weight_decay": wd}) for wd in decays[1:]]
    return out


def stage1_points(grid: dict[str, Any]) -> list[Point]:
    """The stage-1 points that decide stage 2's learning rate (those at ``lambda_rank``)."""
    rank = lambda_rank(grid)
    return [p for p in points(grid) if p.stage == 1 and p.hp.get("rank") == rank]


def argmax(scored: list[tuple[Point, float]]) -> tuple[Point, float]:
    """The best-scoring point; ties go to the earliest in ``scored`` (grid order)."""
    if not scored:
        raise ValueError("no grid points to select from")
    best = scored[0]
    for candidate in scored[1:]:
        if candidate[1] > best[1]:
            best = candidate
    return best


def score(path: str | Path) -> tuple[float, float | None]:
    """The metric value of an evaluation result JSON and its standard error over items (None if it has none)."""
    record = json.loads(Path(path).read_text())
    return float(record["value"]), record.get("stderr")


def read_selection(path: str | Path) -> dict[str, Any]:
    """The selected hyperparameters of a ``select`` output file; a file that is not one is an error naming it."""
    try:
        selected = json.loads(Path(path).read_text())["selected"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a selection written by `spiel select` (no \"selected\" object)") from error
    if not isinstance(selected, dict):
        raise ValueError(f"{path}: \"selected\" is not an object of hyperparameters")
    return selected


def select(grid: dict[str, Any], files: dict[str, str | Path], stage: str, stage1: str | Path | None = None
           ) -> dict[str, Any]:
    """Select over the scored points (``files``: label → MMLU result JSON).

    ``stage="1"``: the best learning rate at ``lambda_rank`` (SpIEL's λ search uses it). ``stage="final"``: the
    setting for every other experiment — the best of all points, except that with a λ grid only points at
    ``lambda_rank`` compete (r fixed as in App. D), stage-2 points with stage 1's learning rate (``stage1``).
    Returns ``{"selected": hp, "label", "score", "points": [every point with hp, score, stderr, file]}``.
    """
    by_label = {p.label: p for p in points(grid)}
    unknown = sorted(set(files) - set(by_label))
    if unknown:
        raise ValueError(f"{unknown}: not points of the grid {sorted(by_label)}")
    first_lr = None
    if stage1 is not None:
        first_lr = read_selection(stage1).get("lr")
        if first_lr is None:
            raise ValueError(f"{stage1}: the stage-1 selection has no learning rate")
    candidates = stage1_points(grid) if stage == "1" else points(grid)
    if stage == "final" and lambda_rank(grid) is not None:
        candidates = [p for p in candidates if p.hp.get("rank") == lambda_rank(grid)]
    missing = [p.label for p in candidates if p.label not in files]
    if missing:
        raise ValueError(f"no result for grid point(s) {missing}")
    rows, scored = [], []
    for point in points(grid):
        if point.label not in files:
            continue
        hp = dict(point.hp)
        if point.stage == 2:
            if first_lr is None:
                raise ValueError(f"{point.label}: stage-2 point needs the stage-1 selection (--stage1)")
            hp["lr"] = first_lr
        value, stderr = score(files[point.label])
        rows.append({"label": point.label, "stage": point.stage, **hp, "score": value, "stderr": stderr,
                     "file": str(files[point.label])})
        if point in candidates:
            scored.append((Point(point.label, point.stage, hp), value))
    best, value = argmax(scored)
    selected = {"lr": best.hp["lr"]} if stage == "1" else best.hp
    return {"selected": selected, "label": best.label, "score": value, "points": rows}
