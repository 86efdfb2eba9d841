"""Report outputs: Figure 2's plotted data equal the saved index ages, and the table layout."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import tiny_llama

from spiel.report.cells import cells, column_name
from spiel.report.figures import figure2, index_ages
from spiel.report.tables import markdown
from spiel.tuner import SpielConfig, get_spiel_model


def _adapter(folder, ages_per_tensor):
    """A SpIEL adapter whose every tensor's ``grown_at`` is a fixed pattern, cycled over its entries."""
    model = get_spiel_model(tiny_llama(), SpielConfig(lora_rank=2))
    total: dict[int, int] = {}
    with torch.no_grad():
        for delta in model.deltas().values():
            pattern = torch.tensor(ages_per_tensor, dtype=torch.int32).repeat(len(delta) // len(ages_per_tensor) + 1)
            delta.grown_at.copy_(pattern[:len(delta)])
            for step, count in zip(*delta.grown_at.unique(return_counts=True), strict=True):
                total[int(step)] = total.get(int(step), 0) + int(count)
    model.save_pretrained(folder)
    return {step: count / sum(total.values()) for step, count in sorted(total.items())}


def test_figure2_plots_the_proportion_of_indices_by_the_step_they_were_grown(tmp_path):
    expected_ag = _adapter(tmp_path / "ag", [0, 5, 5, 10])
    assert _adapter(tmp_path / "ma", [5]) == {5: 1.0}
    assert index_ages(tmp_path / "ag").to_dict() == pytest.approx(expected_ag)
    data = figure2({"SpIEL-AG": [tmp_path / "ag"], "SpIEL-MA": [tmp_path / "ma"]}, tmp_path / "fig" / "figure2.png")
    assert list(data.columns) == ["SpIEL-AG", "SpIEL-MA"] and list(data.index) == [0, 5, 10]
    assert data["SpIEL-MA"].tolist() == [0.0, 1.0, 0.0]
    written = pd.read_csv(tmp_path / "fig" / "figure2.csv", index_col="step")
    assert written["SpIEL-AG"].to_dict() == pytest.approx(expected_ag)
    for suffix in (".png", ".pdf"):
        assert (tmp_path / "fig" / f"figure2{suffix}").stat().st_size > 1000


def test_figure2_draws_bars_at_whole_steps_and_averages_seeds(tmp_path):
    """As the paper draws it: one bar per (label, age), ticks at whole optimizer steps; two runs of one label are
    averaged, each run kept in the data as ``LABEL #i``."""
    import matplotlib.pyplot as plt

    first, second = _adapter(tmp_path / "a1", [0, 5]), _adapter(tmp_path / "a2", [5])
    shown = []
    original = plt.Figure.savefig
    plt.Figure.savefig = lambda fig, *a, **k: shown.append(fig) or original(fig, *a, **k)
    try:
        data = figure2({"SpIEL-AG": [tmp_path / "a1", tmp_path / "a2"]}, tmp_path / "figure2.png")
    finally:
        plt.Figure.savefig = original
    assert list(data.columns) == ["SpIEL-AG", "SpIEL-AG #1", "SpIEL-AG #2"]
    assert data["SpIEL-AG"].to_dict() == pytest.approx({0: first[0] / 2, 5: (first[5] + second[5]) / 2})
    ax = shown[0].axes[0]
    assert [round(bar.get_height(), 6) for bar in ax.patches] == [round(v, 6) for v in data["SpIEL-AG"]]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert all(float(t).is_integer() for t in ticks)


def test_figure2_rejects_a_folder_without_spiel_ages(tmp_path):
    from peft import LoraConfig, get_peft_model

    get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no SpIEL index ages"):
        index_ages(tmp_path)


def test_table_cells_and_markdown_follow_the_paper_layout():
    table1 = cells("table1", ["7b"], ["original", "full", "lora"])
    composed = [c for c in table1 if column_name(c.dataset, c.benchmark) == "tulu_plus_alpaca_humaneval"]
    assert [c.method for c in composed] == ["lora"]  # blank for Original and FullIFT, as in the paper
    assert {(c.evaluated_on, c.benchmark) for c in table1 if c.method == "original"} == {
        ("base", b) for b in ("mmlu", "tydiqa", "humaneval", "gsm", "bbh")}  # every column from the base model
    frame = pd.DataFrame([{"size": "7b", "method": "LoRA", "flan_mmlu": 49.3, "tulu_plus_alpaca_humaneval": None}])
    assert markdown(frame).splitlines()[0] == "| Size | Method | Flan v2 MMLU | Tülu v2 + GPT4-Alpaca HumanEval |"
    assert markdown(frame).splitlines()[2] == "| 7b | LoRA | 49.3 |  |"


def test_results_are_written_whole_with_the_usual_permissions(tmp_path):
    """``atomic_open``: an interrupted write leaves nothing; a finished one has open()'s permissions (umask)."""
    import os

    from spiel.provenance import atomic_open

    target = tmp_path / "table.csv"
    with pytest.raises(RuntimeError), atomic_open(target) as out:
        out.write("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    previous = os.umask(0o022)
    try:
        with atomic_open(target) as out:
            out.write("whole\n")
    finally:
        os.umask(previous)
    assert target.read_text() == "whole\n" and target.stat().st_mode & 0o777 == 0o644


def test_fullift_cells_follow_the_papers_table1(tmp_path):
    """Issue 16.3: 13b FullIFT on Flan v2 / GPT4-Alpaca is blank (no file read), Tülu v2 FullIFT comes from the
    released model; the Markdown says both, and a filled cell equals its evaluation file."""
    import json

    from spiel.report.tables import build, fullift_notes

    blank, released = ["13b/flan", "13b/alpaca"], {"13b/tulu": "Tülu 2 13b", "7b/tulu": "Tülu 2 7b"}
    full = [c for c in cells("table1", ["7b", "13b"], ["full"], blank)]
    assert {(c.size, c.dataset) for c in full} == {("7b", "flan"), ("7b", "alpaca"), ("7b", "tulu"), ("13b", "tulu")}
    files = {}
    for cell in full:
        path = tmp_path / f"{cell.key.replace('/', '-')}.json"
        path.write_text(json.dumps({"benchmark": cell.benchmark, "value": 40.0 + len(cell.benchmark), "stderr": 1.0}))
        files[f"{cell.key}/1"] = path
    frame, sources, _ = build("table1", ["7b", "13b"], ["full"], files, blank)
    row13 = frame[frame["size"] == "13b"].iloc[0]
    assert pd.isna(row13["flan_mmlu"]) and pd.isna(row13["alpaca_humaneval"]) and row13["tulu_gsm"] == 43.0
    assert "13b/FullIFT/flan_mmlu" not in sources and "13b/FullIFT/tulu_mmlu" in sources
    text = markdown(frame, fullift_notes("table1", blank, released))
    assert "FullIFT 13b on Tülu v2: evaluated from Tülu 2 13b, not trained here." in text
    assert "FullIFT blank for 13b GPT4-Alpaca, 13b Flan v2: not trained, as in the paper's Table 1" in text


def test_a_cell_is_the_mean_over_its_seeds_and_the_markdown_shows_the_spread(tmp_path):
    import json
    import statistics

    from spiel.report.tables import build

    files = {}
    for cell in cells("table2", ["s"], ["lora"]):
        for seed, value in ((1, 40.0), (2, 43.0), (3, 47.0)):
            path = tmp_path / f"{cell.dataset}-{cell.benchmark}-{seed}.json"
            path.write_text(json.dumps({"benchmark": cell.benchmark, "value": value + len(cell.benchmark),
                                        "stderr": 1.0}))
            files[f"{cell.key}/{seed}"] = path
    frame, sources, spreads = build("table2", ["s"], ["lora"], files)
    mmlu = spreads["s/LoRA/flan_mmlu"]
    assert mmlu["n"] == 3 and mmlu["seeds"] == [1, 2, 3] and len(sources["s/LoRA/flan_mmlu"]) == 3
    assert mmlu["mean"] == pytest.approx((44 + 47 + 51) / 3) and frame["flan_mmlu"].iloc[0] == round(mmlu["mean"], 2)
    assert mmlu["sd"] == pytest.approx(statistics.stdev([44, 47, 51]))  # sample sd: √(Σ(x − x̄)²/(n − 1))
    text = markdown(frame, spreads=spreads)
    assert f"| s | LoRA | {mmlu['mean']:.1f} ± {mmlu['sd']:.1f} |" in text
    assert "mean ± standard deviation over n = 3 training seeds (1, 2, 3)" in text
    with pytest.raises(ValueError, match="no evaluation file given"):
        build("table2", ["s"], ["lora"], {k: v for k, v in files.items() if not k.startswith("s/lora/flan/mmlu")})
    # one seed: the cell shows its run's standard error over items
    one = {key: path for key, path in files.items() if key.endswith("/1")}
    frame, _, spreads = build("table2", ["s"], ["lora"], one)
    text = markdown(frame, spreads=spreads)
    assert "| s | LoRA | 44.0 ± 1.0 |" in text and "score ± standard error over items (one training seed: 1)" in text


def test_table_rejects_a_malformed_fullift_cell(tmp_path, capsys):
    from spiel.cli import main

    assert main(["table", "--table", "table1", "--sizes", "7b", "--methods", "full", "--result", "x/1=y",
                 "--fullift-blank", "13b-flan", "--out", str(tmp_path / "t.csv")]) == 2
    assert "--fullift-blank '13b-flan': expected SIZE/DATASET" in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()


def test_a_table_of_chosen_columns_reads_only_their_files_and_shows_only_them(tmp_path, capsys):
    """``tables.columns`` (``spiel table --columns``): the table has exactly the chosen columns in the paper's
    order, each cell equal to its evaluation file; a file of a left-out column and an unknown column are refused."""
    import json

    from spiel.cli import main

    chosen = ["flan_tydiqa", "flan_mmlu"]
    kept = cells("table1x", ["s"], ["lora", "shira"], columns=chosen)
    assert [(c.dataset, c.benchmark) for c in kept] == [("flan", "mmlu"), ("flan", "tydiqa")] * 2
    results = []
    for i, cell in enumerate(kept):
        path = tmp_path / f"{i}.json"
        path.write_text(json.dumps({"benchmark": cell.benchmark, "value": 20.0 + i, "stderr": 2.0}))
        results.append(f"{cell.key}/1={path}")
    out = tmp_path / "table1x.csv"
    args = ["table", "--table", "table1x", "--sizes", "s", "--methods", "lora", "shira", "--columns", *chosen]
    assert main([*args, "--result", *results, "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["size", "method", "flan_mmlu", "flan_tydiqa"]
    assert frame.set_index("method").loc["SHiRA", "flan_tydiqa"] == 23.0
    capsys.readouterr()
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"benchmark": "gsm", "value": 1.0, "stderr": 1.0}))
    assert main([*args, "--result", *results, f"s/lora/tulu/gsm/1={other}", "--out", str(tmp_path / "x.csv")]) == 2
    assert "s/lora/tulu/gsm/…: not a cell of table1x" in capsys.readouterr().err
    assert main([*args[:-2], "flan_gsm", "--result", *results, "--out", str(tmp_path / "y.csv")]) == 2
    assert "'flan_gsm' is not a column of table1x" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "y.csv").exists()
