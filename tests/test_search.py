"""The hyperparameter search (App. D): grid points, argmax selection with its tie-break, Table 4, Figure 4."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from spiel.methods import same_hyperparameters
from spiel.search import argmax, points, sci, select, stage1_points

PAPER_SPIEL_AG = {"lr": [3e-6, 1e-5, 3e-5, 1e-4], "rank": [8, 16, 32, 64], "weight_decay": [0, 1, 3, 10, 30]}


def _results(tmp: Path, scores: dict[str, float]) -> dict[str, Path]:
    files = {}
    for label, value in scores.items():
        files[label] = tmp / f"{label}.json"
        files[label].write_text(json.dumps({"benchmark": "mmlu", "value": value, "stderr": 1.0 + value / 10}))
    return files


def test_paper_grid_points_follow_appendix_d():
    grid = points(PAPER_SPIEL_AG)
    stage1 = [p for p in grid if p.stage == 1]
    assert len(stage1) == 16 and len(grid) == 20
    assert stage1[0].label == "lr3e-6-r8" and stage1[0].hp == {"lr": 3e-6, "rank": 8, "weight_decay": 0}
    assert [p.label for p in grid[16:]] == ["wd1", "wd3", "wd10", "wd30"]
    assert all(p.hp == {"rank": 64, "weight_decay": wd} for p, wd in zip(grid[16:], [1, 3, 10, 30], strict=True))
    assert [p.label for p in stage1_points(PAPER_SPIEL_AG)] == ["lr3e-6-r64", "lr1e-5-r64", "lr3e-5-r64",
                                                                "lr1e-4-r64"]
    assert [p.label for p in points({"lr": [1e-5, 3e-4]})] == ["lr1e-5", "lr3e-4"]
    with pytest.raises(ValueError, match="lambda_rank 32"):
        points({"lr": [1e-4], "rank": [8, 64], "weight_decay": [0, 1], "lambda_rank": 32})


def test_sci_writes_numbers_as_the_paper():
    assert [sci(v) for v in (3e-4, 2.5e-5, 1e-3, 0, 0.3, 30)] == ["3e-4", "2.5e-5", "1e-3", "0", "0.3", "30"]


def test_argmax_breaks_ties_by_grid_order():
    assert argmax([("a", 1.0), ("b", 3.0), ("c", 3.0), ("d", 2.0)]) == ("b", 3.0)
    assert argmax([("a", 5.0), ("b", 5.0)]) == ("a", 5.0)
    with pytest.raises(ValueError):
        argmax([])


def test_lora_selection_is_the_argmax_over_lr_and_rank(tmp_path):
    grid = {"lr": [1e-5, 1e-4], "rank": [8, 64]}
    files = _results(tmp_path, {"lr1e-5-r8": 40.0, "lr1e-5-r64": 47.5, "lr1e-4-r8": 47.5, "lr1e-4-r64": 45.0})
    record = select(grid, files, "final")
    # two points tie at 47.5: lr1e-5-r64 comes first in grid order (lr outer, rank inner)
    assert record["label"] == "lr1e-5-r64" and record["selected"] == {"lr": 1e-5, "rank": 64}
    assert [p["score"] for p in record["points"]] == [40.0, 47.5, 47.5, 45.0]


def test_spiel_lambda_search_uses_stage1_lr_at_lambda_rank(tmp_path):
    grid = {"lr": [1e-5, 1e-4], "rank": [8, 64], "weight_decay": [0, 3, 30]}
    # the best stage-1 point overall is at r = 8, but λ is searched at r = 64: its best lr there is 1e-5
    stage1_scores = {"lr1e-5-r8": 30.0, "lr1e-5-r64": 44.0, "lr1e-4-r8": 50.0, "lr1e-4-r64": 41.0}
    files = _results(tmp_path, {**stage1_scores, "wd3": 46.0, "wd30": 45.0})
    first = select(grid, {k: files[k] for k in ("lr1e-5-r64", "lr1e-4-r64")}, "1")
    assert first["selected"] == {"lr": 1e-5}
    (tmp_path / "stage1.json").write_text(json.dumps(first))
    final = select(grid, files, "final", tmp_path / "stage1.json")
    assert final["label"] == "wd3" and final["selected"] == {"lr": 1e-5, "rank": 64, "weight_decay": 3}
    # if every λ scores below λ = 0, the stage-1 point (best lr, r = 64, first λ) is selected
    files = _results(tmp_path, {**stage1_scores, "wd3": 43.0, "wd30": 20.0})
    final = select(grid, files, "final", tmp_path / "stage1.json")
    assert final["label"] == "lr1e-5-r64" and final["selected"] == {"lr": 1e-5, "rank": 64, "weight_decay": 0}
    with pytest.raises(ValueError, match="stage-1 selection"):
        select(grid, files, "final")
    with pytest.raises(ValueError, match=r"no result for grid point\(s\) \['wd30'\]"):
        select(grid, {k: v for k, v in files.items() if k != "wd30"}, "final", tmp_path / "stage1.json")


def test_a_file_that_is_not_a_selection_is_a_one_line_error(tmp_path, training_setup):
    """``train --hp-file`` and ``select --stage1`` name the file that holds no selection; nothing is trained."""
    import subprocess
    import sys

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"label": "lr1e-5"}))
    grid = {"lr": [1e-5], "rank": [8], "weight_decay": [0, 3]}
    with pytest.raises(ValueError, match=r"bad\.json: not a selection"):
        select(grid, _results(tmp_path, {"lr1e-5-r8": 1.0, "wd3": 2.0}), "final", bad)
    done = subprocess.run([sys.executable, "-m", "spiel", "train", "--model", str(training_setup / "model"),
                           "--method", "lora", "--data", str(training_setup / "train.jsonl"),
                           "--out", str(tmp_path / "out"), "--hp", "lr=0.01", "--hp-file", str(bad)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"error: {bad}: not a selection written by `spiel select` " \
                                                   '(no "selected" object)'
    assert not (tmp_path / "out").exists()


def _fixture_selections(tmp: Path) -> dict[tuple[str, str], Path]:
    """Selections of a search at two sizes (scores chosen by hand) written as ``select`` writes them."""
    out = {}
    grids = {"ia3": {"lr": [1e-5, 3e-4]}, "lora": {"lr": [1e-5, 1e-4], "rank": [8, 64]},
             "spiel-ag": {"lr": [1e-5, 1e-4], "rank": [8, 64], "weight_decay": [0, 30]}}
    for size, offset in (("7b", 0.0), ("13b", 5.0)):
        for name, grid in grids.items():
            folder = tmp / size / name
            folder.mkdir(parents=True)
            labels = [p.label for p in points(grid)]
            scores = {label: offset + 10.0 * i % 7 for i, label in enumerate(labels)}
            files = _results(folder, scores)
            stage1 = None
            if "weight_decay" in grid:
                stage1 = folder / "stage1.json"
                stage1.write_text(json.dumps(select(grid, {p.label: files[p.label] for p in stage1_points(grid)},
                                                    "1")))
            out[size, name] = folder / "selected.json"
            out[size, name].write_text(json.dumps(select(grid, files, "final", stage1)))
    return out


def test_table4_from_fixture_selections(tmp_path):
    from spiel.report.tables import build_table4

    selections = _fixture_selections(tmp_path)
    frame, sources = build_table4(selections, {"7b": 2e-5, "13b": 2e-5})
    assert list(frame.columns) == ["size", "method", "lr", "r", "lambda"]
    assert list(frame["method"]) == ["(IA)3", "LoRA", "SpIEL-AG", "Full FT"] * 2
    for (size, name), path in selections.items():
        selected = json.loads(path.read_text())["selected"]
        row = frame[(frame["size"] == size) & (frame["method"] == {"ia3": "(IA)3", "lora": "LoRA",
                                                                   "spiel-ag": "SpIEL-AG"}[name])].iloc[0]
        assert float(row["lr"]) == selected["lr"]
        assert (pd.isna(row["r"]) and "rank" not in selected) or row["r"] == selected["rank"]
        assert (pd.isna(row["lambda"]) and "weight_decay" not in selected) or \
            float(row["lambda"]) == selected["weight_decay"]
    assert frame[frame["method"] == "Full FT"]["lr"].tolist() == ["2e-5", "2e-5"]
    assert sources["13b/LoRA"] == str(selections["13b", "lora"])


def test_figure4_plots_exactly_the_fixture_points(tmp_path):
    from spiel.report.figures import figure4, plot_search, search_points

    selections = _fixture_selections(tmp_path)
    data = figure4(selections, tmp_path / "figure4.png")
    assert (tmp_path / "figure4.pdf").stat().st_size > 1000
    assert len(pd.read_csv(tmp_path / "figure4.csv")) == len(data) == 2 * (2 + 4 + 5)
    fig = plot_search(search_points(selections))
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.axison]
    assert titles == [f"{m} {s}: {axis}" for s in ("7b", "13b")
                      for m, axis in (("(IA)3", "lr"), ("LoRA", "lr × r"), ("SpIEL-AG", "lr × r"), ("SpIEL-AG", "λ"))]
    plotted, bars = {}, {}
    for ax in fig.axes:
        for line in ax.get_lines():
            plotted.setdefault(ax.get_title(), []).extend(zip(line.get_xdata(), line.get_ydata(), strict=True))
        for collection in ax.collections:  # each point's error bar: (x, y − se) to (x, y + se)
            bars.setdefault(ax.get_title(), []).extend((round(float(low[0]), 12), round(float(high[1] - low[1]) / 2, 9))
                                                       for low, high in collection.get_segments())
    for (size, name), path in selections.items():
        record = json.loads(path.read_text())
        stage1 = {(p["lr"], p["score"]) for p in record["points"] if p["stage"] == 1}
        title = {"ia3": "(IA)3 {}: lr", "lora": "LoRA {}: lr × r", "spiel-ag": "SpIEL-AG {}: lr × r"}[name]
        assert set(plotted[title.format(size)]) == stage1
        assert set(bars[title.format(size)]) == {(round(p["lr"], 12), round(1.0 + p["score"] / 10, 9))
                                                 for p in record["points"] if p["stage"] == 1}
        if name == "spiel-ag":
            lam = {(p["weight_decay"], p["score"]) for p in record["points"]
                   if p["rank"] == 64 and p["lr"] == json.loads((path.parent / "stage1.json").read_text())[
                       "selected"]["lr"]}
            assert set(plotted[f"SpIEL-AG {size}: λ"]) == lam


def test_a_training_is_reused_only_where_its_hyperparameters_are_the_same():
    """A grid point or Table 5 cell reuses a Table 1 cell's training only with equal hyperparameters once typed and
    defaulted (SpIEL's schedule knobs compared as the SpielConfig they make); any difference trains anew."""
    cell = {"lr": 2.0e-4, "rank": 8, "update_interval": 2, "estimation_steps": 1, "weight_decay": 0.0}
    assert same_hyperparameters("spiel-ag", cell, {**cell, "schedule": "linear", "replace_all_first": True})
    assert same_hyperparameters("spiel-ag", cell, {**cell, "lr": 2e-4, "weight_decay": 0})  # 0 is 0.0
    for change in ({"schedule": "cosine", "replace_all_first": False}, {"replace_all_first": False},
                   {"update_interval": 4}, {"weight_decay": 1}, {"lr": 1.0e-3}, {"rank": 16}):
        assert not same_hyperparameters("spiel-ag", cell, {**cell, **change}), change
    assert same_hyperparameters("lora", {"lr": 2.0e-4}, {"lr": 2.0e-4, "rank": 64})  # the default rank
    assert not same_hyperparameters("lora", {"lr": 2.0e-4, "rank": 8}, {"lr": 2.0e-4, "rank": 16})
    assert same_hyperparameters("ia3", {"lr": 3.0e-3}, {"lr": 0.003, "weight_decay": 0})
