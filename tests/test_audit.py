"""The replication audit: cells beside the paper's with the difference; claims decided by paired statistics
(exact p-values on hand-computed fixtures), memory by the search's bracket; the audit picture."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spiel.cli import main
from spiel.evaluate.run import aggregate
from spiel.provenance import run_provenance
from spiel.report import stats
from spiel.report.audit import (
    CLAIMS,
    CONTRADICTED,
    EXTENSION,
    INCONCLUSIVE,
    NOT_MEASURED,
    REPLICATED,
    Tables,
    cells,
    claims,
    memory_bracket,
)

PAPER = Path(__file__).resolve().parents[1] / "config/paper_results"


def _ours(tmp: Path) -> Path:
    """A run whose tables are the paper's, except SpIEL-AG's 7b Flan v2 MMLU lowered below LoRA's, and no Table 4."""
    results = tmp / "results"
    results.mkdir()
    for n in (1, 2, 3, 5):
        shutil.copy(PAPER / f"table{n}.csv", results / f"table{n}.csv")
    table1 = pd.read_csv(results / "table1.csv")
    table1.loc[(table1["size"] == "7b") & (table1["method"] == "SpIEL-AG"), "flan_mmlu"] = 40.0
    table1.drop(columns="note").to_csv(results / "table1.csv", index=False)
    pd.DataFrame({"step": [0, 20, 40, 60], "SpIEL-AG 7b": [0.5, 0.2, 0.2, 0.1],
                  "SpIEL-MA 7b": [0.7, 0.2, 0.05, 0.05]}).to_csv(results / "figure2.csv", index=False)
    return results


def test_copied_tables_without_their_files_are_inconclusive_not_decided(tmp_path):
    """Numbers without the per-item files behind them have no noise: a difference cannot be judged."""
    results = _ours(tmp_path)
    frame = claims(Tables.load(results, results / "figure2.csv"), Tables.load(PAPER)).set_index("claim")
    assert len(frame) == len(CLAIMS)
    row = frame.loc["spiel_ag_beats_lora_flan_mmlu"]
    # at 7b SpIEL-AG now scores 40.0 against LoRA's 49.3; 13b 55.8 vs 55.8: mean difference −4.65
    assert row["verdict"] == INCONCLUSIVE and math.isclose(row["effect"], -4.65)
    assert "7b flan_mmlu: SpIEL-AG 40 vs LoRA 49.3" in row["evidence"] and row["in_paper"] == "holds"
    assert math.isclose(row["published_effect"], (50.7 - 49.3 + 55.8 - 55.8) / 2)
    assert "no spread" in row["note"]
    assert frame.loc["spiel_ma_grows_fewer_late", "verdict"] == INCONCLUSIVE
    assert frame.loc["spiel_ma_grows_fewer_late", "in_paper"] == "no published data"
    assert frame.loc["search_picks_largest_rank", "verdict"] == NOT_MEASURED  # no Table 4 in this run
    assert frame.loc["search_picks_largest_rank", "in_paper"] == "holds"


def _evaluation(path: Path, benchmark: str, scores: dict[tuple[str, int], float]) -> Path:
    """An evaluation file as ``spiel evaluate`` writes it (aggregate and per-sample log)."""
    samples = [{"doc_id": i, "group": g, "prompt": f"{g} question {i}", "score": s} for (g, i), s in scores.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": benchmark, **aggregate(benchmark, samples), "samples": samples}))
    return path


def _mmlu_run(tmp: Path, wins: int, losses: int, ties: int = 20) -> Path:
    """A run with only Table 1's Flan v2 MMLU at one size: SpIEL-AG right and LoRA wrong on ``wins`` items, the
    reverse on ``losses``, both right on ``ties``."""
    results = tmp / "results"
    a = {("anatomy", i): 1.0 for i in range(wins)} | {("anatomy", wins + i): 0.0 for i in range(losses)}
    b = {("anatomy", i): 0.0 for i in range(wins)} | {("anatomy", wins + i): 1.0 for i in range(losses)}
    same = {("astronomy", i): 1.0 for i in range(ties)}
    files = {name: _evaluation(results / f"eval/{name}/mmlu.json", "mmlu", scores | same)
             for name, scores in (("SpIEL-AG", a), ("LoRA", b))}
    values = {name: json.loads(f.read_text())["value"] for name, f in files.items()}
    pd.DataFrame([{"size": "s", "method": m, "flan_mmlu": round(v, 2)} for m, v in values.items()]
                 ).to_csv(results / "table1.csv", index=False)
    (results / "table1.json").write_text(json.dumps(
        {"sources": {f"s/{m}/flan_mmlu": str(f.relative_to(tmp)) for m, f in files.items()}}))
    return results


@pytest.mark.parametrize(("wins", "losses", "verdict", "p_value"), [
    (10, 0, REPLICATED, 2 / 2**10),  # exact McNemar: 2·P(X ≥ 10), X ~ Bin(10, ½)
    (6, 3, INCONCLUSIVE, 2 * (84 + 36 + 9 + 1) / 2**9),  # 2·P(X ≥ 6), X ~ Bin(9, ½)
    (0, 10, CONTRADICTED, 2 / 2**10),
])
def test_a_paired_claim_has_the_exact_mcnemar_p_value(tmp_path, wins, losses, verdict, p_value):
    results = _mmlu_run(tmp_path, wins, losses)
    row = claims(Tables.load(results), Tables.load(PAPER)).set_index("claim").loc["spiel_ag_beats_lora_flan_mmlu"]
    n = wins + losses + 20
    assert row["verdict"] == verdict
    assert math.isclose(row["p_value"], p_value) and row["test"].startswith("exact sign test")
    assert math.isclose(row["effect"], 100 * (wins - losses) / n) and row["n"] == n
    assert row["ci_low"] <= row["effect"] <= row["ci_high"]
    if verdict == INCONCLUSIVE:  # what would decide the published +0.7 (mean of 7b's +1.4 and 13b's 0)
        needed = math.ceil(n * (row["detectable"] / 0.7) ** 2)
        assert f"about {needed} items would detect the published +0.7" in row["note"]


def test_sign_flip_enumerates_unequal_terms_exactly():
    # S = 3 + 1 + 1 = 5; of the 8 sign patterns, |S| ≥ 5 only for all-plus and all-minus
    p, test = stats.sign_flip([(np.array([3.0, 1.0, 1.0, 0.0]), 1.0)])
    assert p == 0.25 and test.startswith("exact sign-flip")
    assert stats.sign_flip([(np.zeros(4), 1.0)])[0] == 1.0


def test_the_bootstrap_interval_holds_the_exact_difference_and_narrows_with_items():
    pattern = np.array([100.0, 0.0, 0.0, -100.0, 100.0])  # mean 20
    widths = []
    for copies in (2, 8, 32):
        estimate = stats.estimate([stats.Stratum(np.tile(pattern, copies), 1.0, np.zeros(5 * copies))])
        assert math.isclose(estimate.effect, 20.0) and estimate.low <= 20.0 <= estimate.high
        widths.append(estimate.high - estimate.low)
    assert widths[0] > widths[1] > widths[2]


def test_paired_strata_weigh_groups_as_the_benchmark_score_does(tmp_path):
    """BBH and TyDiQA average their groups: the pooled effect equals the difference of the files' scores."""
    from spiel.report.audit import paired_strata

    a = {("x", 0): 1.0, ("x", 1): 1.0, ("x", 2): 0.0, ("y", 3): 1.0}
    b = {("x", 0): 0.0, ("x", 1): 1.0, ("x", 2): 0.0, ("y", 3): 0.0}
    tables = Tables({})
    for benchmark in ("bbh", "gsm"):
        fa, fb = (_evaluation(tmp_path / f"{benchmark}-{n}.json", benchmark, s) for n, s in (("a", a), ("b", b)))
        estimate = stats.estimate(paired_strata(tables, [fa], [fb], 1.0))
        expected = json.loads(fa.read_text())["value"] - json.loads(fb.read_text())["value"]
        assert math.isclose(estimate.effect, expected)  # bbh: (1/3 + 1)/2·100; gsm: 2/4·100
    _evaluation(tmp_path / "short.json", "gsm", {k: v for k, v in a.items() if k[1] != 3})
    with pytest.raises(ValueError, match="not scored on the same items"):
        paired_strata(tables, [tmp_path / "short.json"], [tmp_path / "gsm-b.json"], 1.0)


def test_groups_of_one_item_pool_so_their_interval_has_width(tmp_path):
    """MMLU with one item per subject (as the laptop default samples it): each subject alone cannot be resampled;
    pooled, the interval spans the one discordant item's ±1/12 while the effect stays the files' difference."""
    from spiel.report.audit import paired_strata

    a = {(f"subject{i}", i): 1.0 if i < 4 else 0.0 for i in range(12)}
    b = {(f"subject{i}", i): 1.0 if i < 3 else 0.0 for i in range(12)}  # one discordant item: a right, b wrong
    fa, fb = (_evaluation(tmp_path / f"mmlu-{n}.json", "mmlu", s) for n, s in (("a", a), ("b", b)))
    strata = paired_strata(Tables({}), [fa], [fb], 1.0)
    estimate = stats.estimate(strata)
    assert len(strata) == 1 and math.isclose(estimate.effect, 100 / 12)
    assert math.isclose(estimate.effect, json.loads(fa.read_text())["value"] - json.loads(fb.read_text())["value"])
    assert estimate.low == 0.0 and estimate.high >= 100 / 12 and estimate.se > 0
    assert estimate.p_value == 1.0  # McNemar: one discordant pair decides nothing


def _memory(passed: int, failed: list[int], step_seconds: list[float]) -> dict:
    probes = [{"limit_mb": f, "passed": False, "reason": "out of memory", "steps": 2} for f in failed]
    probes.append({"limit_mb": passed, "passed": True, "reason": "", "steps": 2, "step_seconds": step_seconds})
    return {"memory_mb": passed, "steps": 2, "probes": probes}


def test_table3_gives_each_number_its_bracket_and_standard_error(tmp_path):
    """Table 3's memory is the search's bracket (highest out-of-memory limit – lowest passing one) and its time the
    mean ± standard error of the timed steps, in the CSV and the markdown; a probe that failed for another reason
    does not narrow the bracket."""
    from spiel.report.tables import build_table3, markdown_table3

    records = {"lora": _memory(2048, [1792, 1024], [1.0, 1.2, 1.4]), "spiel-ag": _memory(1024, [], [2.0])}
    failed = {"limit_mb": 768, "passed": False, "reason": "error: primitive", "steps": 2}
    records["spiel-ag"]["probes"].insert(0, failed)
    paths = []
    for name, record in records.items():
        record.update(method=name, size="s", gradient_checkpointing=False, seconds_per_step=1.2, device="cpu",
                      mechanism="RLIMIT_DATA", peak_mb=1.0)
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(record))
    frame, _ = build_table3(paths)
    lora, ag = frame.iloc[0], frame.iloc[1]
    assert (lora["memory_gb_failed"], lora["memory_gb"]) == (1.75, 2.0) and lora["seconds_per_step_se"] == 0.115
    assert ag["memory_gb_failed"] == 0.0 and pd.isna(ag["seconds_per_step_se"])  # one timed step: no error
    text = markdown_table3(frame)
    assert "| s | LoRA | 1.75–2 / – | 1.2 ± 0.115 / – |" in text and "| s | SpIEL-AG | 0–1 / – | 1.2 / – |" in text


@pytest.mark.parametrize(("ag", "verdict"), [((1024, [768]), REPLICATED), ((2048, [1792]), INCONCLUSIVE),
                                             ((3072, [2816]), CONTRADICTED)])
def test_memory_claims_are_decided_by_the_search_brackets(tmp_path, ag, verdict):
    """LoRA needs (1792, 2048] MiB; SpIEL-AG's bracket below, overlapping, or above it."""
    results = tmp_path / "results"
    results.mkdir()
    records = {"LoRA": _memory(2048, [1792, 1024], [1.0, 1.2]), "SpIEL-AG": _memory(ag[0], ag[1], [1.1, 1.3])}
    for name, record in records.items():
        (results / f"{name}.json").write_text(json.dumps(record))
    pd.DataFrame([{"size": "s", "method": m, "activation_checkpointing": "false",
                   "memory_gb": r["memory_mb"] / 1024, "seconds_per_step": 1.1} for m, r in records.items()]
                 ).to_csv(results / "table3.csv", index=False)
    (results / "table3.json").write_text(json.dumps({"sources": {f"s/{m}/false": f"results/{m}.json"
                                                                 for m in records}}))
    assert memory_bracket(records["LoRA"]) == (1.75, 2.0)
    row = claims(Tables.load(results), Tables.load(PAPER)).set_index("claim").loc["spiel_ag_less_memory_than_lora"]
    assert row["verdict"] == verdict and row["test"] == "search bracket"
    assert math.isclose(row["ci_low"], (ag[1][0] - 2048) / 1024) and math.isclose(row["ci_high"], (ag[0] - 1792) / 1024)


def test_the_audit_picture_plots_the_audit_csv(tmp_path):
    from spiel.report.figures import plot_audit

    results = _mmlu_run(tmp_path, 10, 0)
    frame = claims(Tables.load(results), Tables.load(PAPER))
    figure = plot_audit(frame)
    for ax, row in zip(figure.axes, frame.itertuples(index=False), strict=True):
        plotted = {tuple(line.get_xdata()) for line in ax.lines if line.get_marker() in ("o", "D")}
        expected = {v for v in [(row.effect,), (row.published_effect,)] if not pd.isna(v[0])}
        assert plotted == expected, row.claim
        if not pd.isna(row.ci_low):  # the interval's caps at the CSV's bounds
            caps = sorted(x for line in ax.lines if line.get_marker() == "|" for x in line.get_xdata())
            assert np.allclose(caps, [row.ci_low, row.ci_high])


def test_every_claim_holds_in_the_published_tables_it_reads():
    paper = Tables.load(PAPER)
    frame = claims(paper, paper).set_index("claim")
    for claim in CLAIMS:
        unpublished = claim.tables == ("figure2",) or claim.source == EXTENSION  # no data, or not the paper's
        expected = "no published data" if unpublished else "holds"
        assert frame.loc[claim.name, "in_paper"] == expected, claim.name


def test_cells_sit_beside_the_paper_with_the_difference(tmp_path):
    results = _ours(tmp_path)
    frame = cells(Tables.load(results), Tables.load(PAPER), {})
    row = frame[(frame["table"] == "table1") & (frame["row"] == "7b / SpIEL-AG") & (frame["column"] == "flan_mmlu")]
    assert row[["ours", "paper", "difference"]].iloc[0].tolist() == [40.0, 50.7, -10.7]
    same = frame[(frame["table"] == "table3") & (frame["row"] == "13b / qLoRA / true")]
    assert same["difference"].tolist() == [0.0, 0.0] and same["column"].tolist() == ["memory_gb", "seconds_per_step"]
    # a size mapping puts another model's rows beside the paper's 7b
    table2 = pd.read_csv(results / "table2.csv")
    table2["size"] = table2["size"].replace({"7b": "135m"})
    table2.to_csv(results / "table2.csv", index=False)
    mapped = cells(Tables.load(results), Tables.load(PAPER), {"135m": "7b"})
    row = mapped[(mapped["table"] == "table2") & (mapped["row"] == "135m / qLoRA")].iloc[0]
    assert row["paper_row"] == "7b / qLoRA" and row["difference"] == 0.0


def test_provenance_records_config_hash_devices_and_stage_times(tmp_path):
    (tmp_path / "benchmarks/train/x").mkdir(parents=True)
    timings = {"train": []}
    for name, seconds in (("a", 12.5), ("b", 7.5), ("c", 100.0)):
        (tmp_path / f"benchmarks/train/x/{name}.tsv").write_text(f"s\th:m:s\n{seconds}\t0:00:{seconds}\n")
        timings["train"].append(tmp_path / f"benchmarks/train/x/{name}.tsv")
    for name, device in (("m", "cpu (x86_64, no GPU)"), ("other", "cuda (H200)")):
        (tmp_path / f"results/adapters/{name}").mkdir(parents=True)
        (tmp_path / f"results/adapters/{name}/train_summary.json").write_text(json.dumps({"device": device}))
    # only the files it is given: c.tsv and the other adapter are beside them but not the run's
    record = run_provenance({"seed": 3, "b": 1}, [tmp_path / "results/adapters/m"], [],
                            {"train": timings["train"][:2]})
    assert record["wall_s_per_stage"] == {"train": 20.0}
    assert record["device"] == "cpu (x86_64, no GPU)" and record["seed"] == 3
    assert record["config_sha256"] == run_provenance({"b": 1, "seed": 3})["config_sha256"]


def test_seeds_are_resampled_before_items():
    """Two seeds of cell a that disagree: the effect is their mean, and the interval, which resamples seeds first,
    is wider than that of either seed's items alone."""
    items = 200
    rng = np.random.default_rng(0)
    b = (rng.random((1, items)) < 0.5) * 100.0
    a = np.vstack([np.clip(b + 100.0 * (rng.random(items) < 0.3), 0, 100),  # seed 1: better on 30 % of items
                   np.clip(b - 100.0 * (rng.random(items) < 0.3), 0, 100)])  # seed 2: worse
    pooled = stats.estimate([stats.Stratum(a, 1.0, b)])
    assert math.isclose(pooled.effect, a.mean() - b.mean()) and "2 seeds then items" in pooled.test
    for seed in range(2):
        alone = stats.estimate([stats.Stratum(a[[seed]], 1.0, b)])
        assert pooled.high - pooled.low > alone.high - alone.low


def test_two_runs_of_two_seeds_cannot_decide_a_seed_level_claim():
    """Unpaired per-seed measures: the exact permutation test over the 6 relabellings of 2 + 2 runs gives p = 2/6
    even for fully separated runs; 4 + 4 runs give 2/70."""
    estimate = stats.estimate([stats.Stratum(np.array([1.0, 1.0]), 1.0, np.array([0.94, 0.95]), paired=False)])
    assert math.isclose(estimate.p_value, 2 / 6) and estimate.test == "exact permutation, 6 relabellings"
    assert stats.decide(estimate, -1) == INCONCLUSIVE
    estimate = stats.estimate([stats.Stratum(np.array([1.0, 1.1, 1.2, 1.3]), 1.0, np.array([0.1, 0.2, 0.3, 0.4]),
                                             paired=False)])
    assert math.isclose(estimate.p_value, 2 / 70) and stats.decide(estimate, 1) == REPLICATED


def test_items_that_never_differ_decide_nothing():
    """All six paired differences are 0: the bootstrap has no spread, so even a margin claim stays inconclusive."""
    estimate = stats.estimate([stats.Stratum(np.zeros((1, 6)), 1.0, np.zeros((1, 6)))], margin=3.0)
    assert estimate.se == 0 and stats.decide(estimate, -1, 3.0) == INCONCLUSIVE


@pytest.mark.parametrize(("wins", "losses", "outcome"), [(10, 0, "A higher"), (6, 3, "inconclusive")])
def test_compare_prints_the_paired_difference_and_exact_p_value(tmp_path, capsys, wins, losses, outcome):
    """`spiel compare A B` (e.g. an exported LoRA against its SpIEL adapter): A right and B wrong on ``wins`` items,
    the reverse on ``losses``, both right on 20: effect 100·(wins − losses)/n, the exact McNemar p, items alike."""
    a = {("anatomy", i): 1.0 for i in range(wins)} | {("anatomy", wins + i): 0.0 for i in range(losses)}
    b = {key: 1.0 - score for key, score in a.items()}
    same = {("anatomy", wins + losses + i): 1.0 for i in range(20)}  # in one group: the bootstrap has spread
    files = [_evaluation(tmp_path / f"{name}/mmlu.json", "mmlu", scores | same) for name, scores in (("a", a),
                                                                                                     ("b", b))]
    assert main(["compare", *map(str, files)]) == 0
    printed = capsys.readouterr().out
    n = wins + losses + 20
    p = 2 * sum(math.comb(wins + losses, k) for k in range(max(wins, losses), wins + losses + 1)) / 2 ** (wins + losses)
    assert f"A − B = {100 * (wins - losses) / n:+.4g} [" in printed and f"(95 %, {n} items), p = {p:.3g}" in printed
    assert f"items scored alike {20 / n:.0%}" in printed and printed.rstrip().endswith(outcome)
    assert main(["compare", str(files[0]), str(tmp_path / "missing.json")]) == 2  # a one-line error, no traceback
