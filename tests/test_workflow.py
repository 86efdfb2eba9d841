"""The Snakemake workflow: lint, dry-runs, config validation, the micro config end to end, a no-op rerun."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml
from workflow_copy import ROOT
from workflow_copy import snakemake as _snakemake
from workflow_copy import workdir as _workdir


def test_lint_is_clean(tmp_path):
    done = _snakemake(_workdir(tmp_path), "--lint")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Congratulations" in done.stdout + done.stderr


@pytest.mark.parametrize(("configfile", "extension"), [(None, True), (None, False), (".test/config.yaml", True),
                                                     ("config/paper.yaml", False), ("config/paper.yaml", True)])
def test_dry_run_of_every_config(tmp_path, configfile, extension):
    """Job counts of rule all per config, with the static sparse extension (Table 1x) as configured and switched."""
    extra = ["--configfile", configfile] if configfile else []
    paper = configfile == "config/paper.yaml"
    if extension == paper:  # the default and micro configs have it on, the paper config off
        switch = f"{{enabled: {str(extension).lower()}, sizes: [{'7b' if paper else '135m'}]}}"
        extra += ["--config", f"static_sparse={switch}"]
    done = _snakemake(_workdir(tmp_path), "-n", *extra)  # rule all
    assert done.returncode == 0, done.stderr
    jobs = {line.split()[0]: int(line.split()[1]) for line in done.stdout.splitlines()
            if line.strip() and line.split()[0] in ("train", "evaluate_all", "evaluate_base_4bit", "evaluate_flan",
                                                    "evaluate_code",
                                                    "train_ablation", "evaluate_ablation", "train_search",
                                                    "evaluate_search", "select_stage1", "select", "memory",
                                                    "heldout", "table1h", "table")}
    default = configfile is None
    sizes = 2 if paper else 1
    # Table 1-2 cells train and evaluate once per seed (micro: 2 seeds; the untrained base model once); search,
    # memory and ablation once
    seeds = 2 if configfile == ".test/config.yaml" else 1
    # per size — train: 5 methods × 3 datasets (Table 1) + 3 quantized × flan/alpaca (Table 2; the default's
    # tables.columns: Flan v2 only); evaluate: base and 5 Tülu models on all five, the 4-bit base on Table 2's
    # benchmarks; flan: 5 + 3; code: alpaca 5 (+ 3), composed 4 (Table 1)
    table2_datasets = 1 if default else 2
    expected = {"train": (15 + 3 * table2_datasets) * seeds, "evaluate_all": 1 + 5 * seeds, "evaluate_base_4bit": 1,
                "evaluate_flan": 8 * seeds, "evaluate_code": (9 + 3 * (table2_datasets - 1)) * seeds}
    # Table 5: 2 schedules × 2 values of S (the paper: × 4, at 7b only; the default: × 1), one training and one
    # evaluation each, but the linear cell at Table 1's S is Table 1's SpIEL-AG Flan v2 cell, reused (as in the
    # paper: 50.7 / 56.2 both)
    ablations = (8 if paper else 2 if default else 4) - 1
    # Search points per size. Paper (App. D): (IA)3 4 lr; LoRA 4 lr × 4 r; SpIEL-AG and -MA 4 lr × 4 r, then λ at
    # r = 64 with the best lr: 5 values, of which the first is already a stage-1 point → 4 more each (60).
    # Micro: (IA)3 2 lr; LoRA 1 lr × 2 r; SpIEL 2 lr × 1 r + 1 more λ each. Default: 2 lr (× 1 r) each, no λ stage.
    # Without search.enabled (the default) a point with a Table 1 Flan v2 cell's hyperparameters reuses its
    # training: one per method here.
    points = 4 + 4 * 4 + 2 * (4 * 4 + 4) if paper else 2 * 4 if default else 2 + 2 + 2 * (2 + 1)
    search = {"train_search": points - (4 if default else 0), "evaluate_search": points, "select": 4,
              "select_stage1": 0 if default else 2}
    # Table 3 per size: 6 methods × checkpointing off/on (micro: LoRA and SpIEL-AG, off only)
    memory = 2 if configfile == ".test/config.yaml" else 6 * 2
    # held-out loss (not in the paper config): the base model on the 3 splits once, 5 trained rows on theirs per seed
    heldout = {} if paper else {"heldout": 3 + 5 * 3 * seeds, "table1h": 1}
    want = {**{k: v * sizes for k, v in {**expected, **search, "memory": memory, **heldout}.items()},
            "train_ablation": ablations, "evaluate_ablation": ablations, "table": 2}
    if paper:
        # paper Table 1: Tülu v2 FullIFT is the released Tülu 2 model (evaluated, not trained) at both sizes;
        # no 13b FullIFT on Flan v2 or GPT4-Alpaca (one fewer Flan and one fewer code evaluation)
        want.update(train=2 * 21 - 1 - 3, evaluate_flan=2 * 8 - 1, evaluate_code=2 * 12 - 1)
    if extension:
        # at one size, Table 1x's 3 new rows × 3 datasets per seed (LoRA and SpIEL rows are Table 1's): 9
        # trainings, 3 Tülu and 3 Flan evaluations, 3 GPT4-Alpaca and 3 composed HumanEval (the default's
        # tables.columns: Flan v2 only); the search: SHiRA and Super-Tuning as LoRA, SpIEL-fixed as SpIEL-AG (a λ
        # stage); Table 3: SHiRA and Super-Tuning × checkpointing
        new = {"train": 3 * seeds, "evaluate_flan": 3 * seeds, "table": 1} if default else {
            "train": 9 * seeds, "evaluate_all": 3 * seeds, "evaluate_flan": 3 * seeds, "evaluate_code": 6 * seeds,
            "table": 1}
        if paper:  # the default's grid and memory.methods leave them out (rule all's hour), the micro's too
            new.update(memory=2 * 2)
            grid = 3 * (4 * 4) + 4
            new.update(train_search=grid, evaluate_search=grid, select=3, select_stage1=1)
        want = {k: want.get(k, 0) + new.get(k, 0) for k in {*want, *new}}
    assert jobs == {rule: count for rule, count in want.items() if count}  # a rule of no job is not listed
    if configfile == "config/paper.yaml":
        assert re.search(r"^prepare_released +2$", done.stdout, re.MULTILINE)


def test_paper_model_not_in_the_local_cache_says_what_to_do(tmp_path, monkeypatch, capsys):
    from spiel.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["prepare-model", "--source", "hub", "--set", "id=meta-llama/Llama-2-7b-hf",
                 "--out", str(tmp_path / "7b")]) == 2
    assert "hf download meta-llama/Llama-2-7b-hf" in capsys.readouterr().err
    assert not (tmp_path / "7b").exists()


@pytest.mark.parametrize(("key", "value", "message"), [
    ("trainig", {"epochs": 1}, "trainig"),                       # unknown key (typo)
    ("training", {"epochs": "two"}, "epochs"),                    # wrong type
    ("hyperparameters", {"lora": {"lr": 1e-4, "rnak": 8}}, "rnak"),
])
def test_bad_config_is_rejected_naming_the_key_before_any_job(tmp_path, key, value, message):
    workdir = _workdir(tmp_path)
    config = yaml.safe_load((workdir / ".test/config.yaml").read_text())
    config[key] = value
    (workdir / "bad.yaml").write_text(yaml.safe_dump(config))
    done = _snakemake(workdir, "results/table1.csv", "--configfile", "bad.yaml")
    assert done.returncode != 0
    assert message in done.stderr
    assert not (workdir / "results").exists() and not (workdir / "logs").exists()


@pytest.mark.parametrize(("name", "methods"), [
    ("table1", ["Original", "FullIFT", "(IA)3", "LoRA", "SpIEL-AG", "SpIEL-MA"]),
    ("table2", ["Original (4-bit)", "qLoRA", "qSpIEL-AG", "qSpIEL-MA"]),
    ("table1x", ["LoRA", "SHiRA", "Super-Tuning", "SpIEL-fixed", "SpIEL-AG", "SpIEL-MA"]),  # beyond the paper
])
def test_micro_config_produces_the_tables_from_their_evaluation_files(micro, name, methods):
    table = pd.read_csv(micro / f"results/{name}.csv")
    assert list(table["method"]) == methods
    paper = pd.read_csv(micro / f"config/paper_results/{name.replace('1x', '1')}.csv")  # 1x: Table 1's columns
    assert list(table.columns) == [c for c in paper.columns if c != "note"]
    record = json.loads((micro / f"results/{name}.json").read_text())
    sources, spreads = record["sources"], record["spread"]
    for row in table.itertuples(index=False):
        for column in table.columns[2:]:
            key = f"{row.size}/{row.method}/{column}"
            value = getattr(row, column)
            if name == "table1" and column == "tulu_plus_alpaca_humaneval" and row.method in ("Original", "FullIFT"):
                assert pd.isna(value) and key not in sources  # blank, as in the paper
                continue
            evaluations = [json.loads((micro / path).read_text()) for path in sources[key]]
            # seeds 7 and 8; the untrained base model once
            assert len(evaluations) == (1 if row.method.startswith("Original") else 2)
            assert all(e["n_items"] > 0 and e["protocol"]["seed"] == 7 for e in evaluations)  # the same items
            assert value == round(sum(e["value"] for e in evaluations) / len(evaluations), 2)  # their mean
            assert spreads[key]["values"] == [e["value"] for e in evaluations]
    assert (micro / f"results/{name}.md").read_text().startswith("| Size | Method | Flan v2 MMLU")
    seeds = "2" if name == "table1x" else "1/2"  # Table 1x has no untrained row
    note = f"mean ± standard deviation over n = {seeds} training seeds (7, 8)"
    assert note in (micro / f"results/{name}.md").read_text()
    if name == "table1":
        composed = json.loads((micro / sources["tiny/LoRA/tulu_plus_alpaca_humaneval"][0]).read_text())
        assert len(composed["adapters"]) == 2  # Tülu v2 ⊕ GPT4-Alpaca
    elif name == "table1x":  # the rows it shares with Table 1 are the same evaluations
        table1 = json.loads((micro / "results/table1.json").read_text())["sources"]
        assert all(sources[k] == table1[k] for k in sources if k.split("/")[1] in ("LoRA", "SpIEL-AG", "SpIEL-MA"))
        for label in ("SHiRA", "Super-Tuning"):
            composed = json.loads((micro / sources[f"tiny/{label}/tulu_plus_alpaca_humaneval"][0]).read_text())
            assert len(composed["adapters"]) == 2
    else:
        qlora = json.loads((micro / sources["tiny/qLoRA/flan_mmlu"][0]).read_text())
        assert len(qlora["adapters"]) == 1 and qlora["load_in_4bit"]  # applied on the NF4-loaded base


def test_second_run_on_a_finished_dag_does_nothing(micro):
    done = _snakemake(micro, "--configfile", ".test/config.yaml")
    assert done.returncode == 0
    assert "Nothing to be done" in done.stdout + done.stderr


@pytest.mark.parametrize("runtime", [
    ["--set-resources", "train:mem_mb=9000", "evaluate_all:runtime=999", "memory:mem_mb=12345"],
    ["--set-threads", "train=2", "evaluate_all=2", "--cores", "1"],
    ["--profile", "profiles/slurm"],
])
def test_runtime_settings_of_a_finished_dag_plan_nothing(micro, runtime):
    """Issue 16.8: resources, threads, cores or the cluster profile are how a job runs, not what it computes; a job
    retried with more memory must not make every later invocation rerun it and everything downstream."""
    done = _snakemake(micro, "-n", "--configfile", ".test/config.yaml", *runtime,
                      cores="--cores" not in runtime and "--profile" not in runtime)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Nothing to be done" in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]


def test_conda_environment_pins_match_requirements():
    requirements = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
                    if line and not line.startswith("#") and line != "-e ."]
    environment = yaml.safe_load((ROOT / "envs/spiel.yaml").read_text())
    assert environment["dependencies"][-1]["pip"] == requirements


def test_micro_config_scores_every_table1_row_on_the_heldout_splits(micro):
    table = pd.read_csv(micro / "results/table1h.csv")
    assert list(table["method"]) == ["Original", "FullIFT", "(IA)3", "LoRA", "SpIEL-AG", "SpIEL-MA"]
    assert list(table.columns[2:]) == [f"{split}_heldout_{measure}{suffix}" for measure in ("loss", "em")
                                       for split in ("flan", "alpaca", "tulu") for suffix in ("", "_delta")]
    record = json.loads((micro / "results/table1h.json").read_text())

    def part(result, measure):  # the loss is the record itself; exact match its own part
        return result if measure == "loss" else result["exact_match"]

    def samples(result, measure):
        return {s["doc_id"]: s["score"] if measure == "loss" else 100.0 * s["exact_match"]
                for s in part(result, measure)["samples"]}

    for row in table.itertuples(index=False):
        for column in table.columns[2::2]:
            key, measure = f"{row.size}/{row.method}/{column}", column.rpartition("_")[2]
            if key not in record["sources"]:  # a split without verifiable answers (alpaca's; tulu's may have some)
                assert measure == "em" and not column.startswith("flan"), key  # flan's are all reasoning-gym's
                assert pd.isna(getattr(row, column)) and pd.isna(getattr(row, f"{column}_delta"))
                continue
            results = [json.loads((micro / path).read_text()) for path in record["sources"][key]]
            assert len(results) == (1 if row.method == "Original" else 2)  # seeds 7 and 8
            values = [part(r, measure)["value"] for r in results]
            assert getattr(row, column) == round(sum(values) / len(values), 4)
            assert all(0 < part(r, measure)["n_items"] <= 4 for r in results)  # heldout: 4 in .test/config.yaml
            base = json.loads((micro / record["sources"][f"{row.size}/Original/{column}"][0]).read_text())
            reference = samples(base, measure)
            changes = [sum(x - reference[i] for i, x in samples(r, measure).items()) / len(reference)
                       for r in results]
            delta = getattr(row, f"{column}_delta")
            assert pd.isna(delta) if row.method == "Original" else delta == round(sum(changes) / len(changes), 4)
    text = (micro / "results/table1h.md").read_text()
    assert "held-out loss" in text and "Flan v2 held-out exact match" in text


def test_micro_config_draws_figure2_from_its_flan_adapters(micro):
    from spiel.report.figures import index_ages

    data = pd.read_csv(micro / "results/figure2.csv", index_col="step")
    runs = ("", " #1", " #2")  # the mean over seeds 7 and 8, then each seed's run
    assert list(data.columns) == [f"{label} tiny{run}" for label in ("SpIEL-AG", "SpIEL-MA") for run in runs]
    for label, method in (("SpIEL-AG tiny", "spiel-ag"), ("SpIEL-MA tiny", "spiel-ma")):
        for run, seed in ((1, 7), (2, 8)):  # each seed's run, and their mean
            ages = index_ages(micro / f"results/adapters/tiny/flan/{method}/seed-{seed}")
            assert data[f"{label} #{run}"].loc[ages.index].tolist() == pytest.approx(ages.tolist())
        assert data[label].tolist() == pytest.approx(((data[f"{label} #1"] + data[f"{label} #2"]) / 2).tolist())
        assert data[label].sum() == pytest.approx(1.0)
    assert (micro / "results/figure2.pdf").stat().st_size > 1000


def test_micro_config_produces_table5_from_its_evaluation_files(micro):
    table = pd.read_csv(micro / "results/table5.csv")
    assert list(table.columns) == list(pd.read_csv(micro / "config/paper_results/table5.csv").columns)
    assert list(zip(table["schedule"], table["update_every_steps"], strict=True)) == [
        ("linear", 1), ("linear", 2), ("cosine", 1), ("cosine", 2)]
    record = json.loads((micro / "results/table5.json").read_text())
    text = (micro / "results/table5.md").read_text()
    for row in table.itertuples(index=False):
        for benchmark in ("mmlu", "tydiqa"):
            key = f"{row.schedule}/{row.update_every_steps}/{benchmark}"
            result = json.loads((micro / record["sources"][key]).read_text())
            assert getattr(row, benchmark) == round(result["value"], 2) and record["stderr"][key] == result["stderr"]
            assert f"{result['value']:.1f} ± {result['stderr']:.1f}" in text
    summary = json.loads((micro / "results/ablation/tiny/cosine-S2/adapter/train_summary.json").read_text())
    assert summary["config"]["hp"]["schedule"] == "cosine" and summary["config"]["hp"]["update_interval"] == 2


def test_micro_config_search_selects_the_best_point_and_the_tables_train_with_it(micro):
    from spiel.methods import method
    from spiel.search import argmax, points

    grid = yaml.safe_load((micro / ".test/config.yaml").read_text())["search"]["grid"]
    table4 = pd.read_csv(micro / "results/table4.csv")
    assert list(table4.columns) == list(pd.read_csv(micro / "config/paper_results/table4.csv").columns)
    assert list(table4["method"]) == ["(IA)3", "LoRA", "SpIEL-AG", "SpIEL-MA", "Full FT"]
    figure = pd.read_csv(micro / "results/figure4.csv")
    for name in grid:
        record = json.loads((micro / f"results/search/tiny/{name}/selected.json").read_text())
        scores = {p["label"]: json.loads((micro / p["file"]).read_text())["value"] for p in record["points"]}
        assert [p["score"] for p in record["points"]] == list(scores.values())
        assert len(scores) == len(points(grid[name]))
        competing = [p for p in record["points"] if "weight_decay" not in p or p["rank"] == max(grid[name]["rank"])]
        best = argmax([(p["label"], p["score"]) for p in competing])[0]
        assert record["label"] == best
        assert sorted(figure[figure["method"] == name]["label"]) == sorted(scores)
        # every Table 1 / 2 / 5 training cell of this method (and its 4-bit counterpart) trained with the selection
        cells = [f"results/adapters/tiny/{d}/{name}/seed-{s}" for d in ("flan", "alpaca", "tulu") for s in (7, 8)]
        if name != "ia3":
            cells.append(f"results/adapters/tiny/flan/q{name}/seed-7")
        if name == "spiel-ag":
            cells.append("results/ablation/tiny/cosine-S1/adapter")  # linear-S1 is Table 1's Flan cell, reused
        for cell in cells:
            hp = json.loads((micro / cell / "train_summary.json").read_text())["config"]["hp"]
            assert {k: hp[k] for k in record["selected"]} == record["selected"], cell
        row = table4[table4["method"] == method(name).label]
        assert float(row["lr"].iloc[0]) == record["selected"]["lr"]
    stage2 = json.loads((micro / "results/search/tiny/spiel-ma/wd0.3/adapter/train_summary.json").read_text())
    stage1 = json.loads((micro / "results/search/tiny/spiel-ma/stage1.json").read_text())
    assert stage2["config"]["hp"]["lr"] == stage1["selected"]["lr"]  # λ searched at stage 1's learning rate
    assert stage2["config"]["hp"]["weight_decay"] == 0.3


def test_micro_config_produces_table3_from_its_memory_searches(micro):
    table = pd.read_csv(micro / "results/table3.csv")
    paper = pd.read_csv(micro / "config/paper_results/table3.csv")
    assert list(table.columns[:5]) == list(paper.columns)
    assert list(table["method"]) == ["LoRA", "SpIEL-AG"]
    sources = json.loads((micro / "results/table3.json").read_text())["sources"]
    for row in table.itertuples(index=False):
        record = json.loads((micro / sources[f"{row.size}/{row.method}/false"]).read_text())
        assert row.memory_mb == record["memory_mb"] and row.memory_gb == round(record["memory_mb"] / 1024, 3)
        assert row.seconds_per_step == round(record["seconds_per_step"], 3) and row.steps == record["steps"]
        assert row.device.startswith("cpu") and row.mechanism.startswith("RLIMIT_DATA")  # never labelled GPU
        passed = [p for p in record["probes"] if p["passed"]]
        assert min(p["limit_mb"] for p in passed) == record["memory_mb"]
        assert all(p["limit_mb"] < record["memory_mb"] for p in record["probes"] if not p["passed"])


def test_micro_config_audits_every_claim_from_its_result_files(micro):
    from spiel.report.audit import CLAIMS, NOT_MEASURED, VERDICTS

    audit = pd.read_csv(micro / "results/audit.csv")
    claims = audit[audit["kind"] == "claim"].set_index("claim")
    assert list(claims.index) == [c.name for c in CLAIMS]
    assert set(claims["verdict"]) <= set(VERDICTS)
    for name, row in claims[claims["verdict"] != NOT_MEASURED].iterrows():
        # every measured claim has its effect inside its interval, or says why it has none (one run of Figure 2)
        assert (row["ci_low"] <= row["effect"] <= row["ci_high"]) or row["note"].startswith("one run"), name
    assert claims.loc["search_picks_largest_rank", "test"].startswith(("exact", "sign-flip"))  # LoRA r 2 vs 4
    assert (micro / "results/audit.png").stat().st_size > 0 and (micro / "results/audit.pdf").exists()
    for claim in CLAIMS:
        for table in claim.tables:
            assert (micro / "results" / f"{table}.csv").exists(), (claim.name, table)
    # the micro config measures LoRA and SpIEL-AG without checkpointing only: SpIEL-AG vs LoRA is decided
    assert claims.loc["spiel_ag_less_memory_than_lora", "verdict"] != "not measured"
    assert claims.loc["checkpointing_helps_lora_most", "verdict"] == "not measured"
    for name in ("spiel_ag_beats_shira", "spiel_ag_beats_supertuning", "drop_and_grow_beats_fixed"):
        assert claims.loc[name, "verdict"] != NOT_MEASURED and claims.loc[name, "in_paper"] == "no published data"
    cell_rows = audit[audit["kind"] == "cell"]
    assert set(cell_rows["table"]) == {"table1", "table2", "table3", "table4", "table5"}
    provenance = json.loads((micro / "results/provenance.json").read_text())
    assert provenance["device"].startswith("cpu") and provenance["seed"] == 7
    assert {"train", "evaluate", "search", "memory", "heldout", "ablation"} <= set(provenance["wall_s_per_stage"])
    assert (micro / "results/audit.md").read_text().startswith("# Replication audit")


def test_snakemake_report_builds_from_the_micro_results(micro):
    done = _snakemake(micro, "--configfile", ".test/config.yaml", "--report", "results/report.html")
    assert done.returncode == 0, done.stderr[-3000:]
    html = (micro / "results/report.html").read_text()
    for name in ("table1.csv", "table3.csv", "table4.csv", "figure2.png", "figure4.png", "audit.md"):
        assert name in html, name


def _readme_commands() -> list[list[str]]:
    """Every ``snakemake`` command line the README shows (code blocks and inline), as argument lists."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text()
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]
    lines += re.findall(r"`(snakemake [^`]*)`", text)
    return [shlex.split(line, comments=True) for line in lines if line.strip().startswith("snakemake ")]


def test_documented_commands_run_as_written(tmp_path):
    """Targets come before ``--configfile`` (which takes several values and would read a target as a config file),
    and every documented command that plans jobs dry-runs as written."""
    commands = _readme_commands()
    assert len(commands) >= 5
    folder = _workdir(tmp_path)
    planned = set()
    for argv in commands:
        if "--configfile" in argv:
            start = argv.index("--configfile") + 2
            for i in range(start, len(argv)):  # after the config file: options and their values only
                assert argv[i].startswith("-") or argv[i - 1].startswith("-"), argv
        if {"--report", "--lint"} & set(argv) or "profiles/slurm" in argv or tuple(argv) in planned:
            continue  # the report needs a finished run, lint has its test, the SLURM profile needs sbatch
        planned.add(tuple(argv))
        done = _snakemake(folder, *argv[1:], "-n", cores=False)
        assert done.returncode == 0, (argv, done.stderr[-2000:])


def test_nested_config_overrides_keep_their_types(tmp_path):
    """``--config 'protocol={gsm: {max_items: 50}}'`` merges into the config with 50 a number (Snakemake passes
    nested values as strings, which the schema would refuse); a bad nested value names its key."""
    folder = _workdir(tmp_path)
    done = _snakemake(folder, "-n", "results/table1.csv", "--config", "protocol={gsm: {max_items: 50}}")
    assert done.returncode == 0, done.stderr[-2000:]
    bad = _snakemake(folder, "-n", "results/table1.csv", "--config", "training={epochs: 0}")
    message = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "0 is less than the minimum of 1" in message and "epochs" in message


def test_a_grid_point_reuses_a_table1_training_only_without_search_enabled(tmp_path):
    """The default's 4 stage-1 points with Table 1's hyperparameters are scored on Table 1's Flan v2 adapters (its
    trainings planned, not the points'); with ``search.enabled`` those cells train with the selection the points
    feed, so every point trains on its own."""
    folder = _workdir(tmp_path)
    plain = _snakemake(folder, "-n", "results/table4.csv")
    enabled = _snakemake(folder, "-n", "results/table4.csv", "--config", "search={enabled: true}")
    assert plain.returncode == 0 and enabled.returncode == 0, plain.stderr[-2000:] + enabled.stderr[-2000:]
    assert {k: _planned(plain).get(k) for k in ("train", "train_search", "evaluate_search")} == {
        "train": 4, "train_search": 4, "evaluate_search": 8}
    assert {k: _planned(enabled).get(k) for k in ("train", "train_search", "evaluate_search")} == {
        "train": None, "train_search": 8, "evaluate_search": 8}
    assert "input: resources/models/135m, results/adapters/135m/flan/lora/seed-42" in plain.stdout


@pytest.mark.parametrize("change,named", [
    (lambda c: c["eval_data"].pop("gsm"), "'gsm' is a required property"),
    (lambda c: c["train_data"].pop("tulu"), "'tulu' is a required property"),
    (lambda c: c["hyperparameters"]["lora"].update(update_interval=3),
     "['update_interval'] not hyperparameter(s) of lora"),
    (lambda c: c["training"].update(batch_size=6), "batch_size=6: must be a multiple of micro_batch_size=4"),
])
def test_a_config_the_jobs_would_refuse_stops_before_any_job(tmp_path, change, named):
    folder = _workdir(tmp_path)
    config = yaml.safe_load((folder / "config" / "config.yaml").read_text())
    change(config)
    (folder / "bad.yaml").write_text(yaml.safe_dump(config))
    done = _snakemake(folder, "-n", "results/table1.csv", "--configfile", "bad.yaml")
    assert done.returncode != 0 and named in done.stdout + done.stderr, done.stdout[-1500:] + done.stderr[-1500:]


def _planned(done) -> dict[str, int]:
    """Rule → job count of a dry run's "Job stats" table."""
    table = done.stdout.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in table.splitlines()]
    return {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[1].isdigit() and row[0] != "total"}


def test_a_changed_evaluation_reruns_exactly_what_reads_it(micro, tmp_path):
    """Every file the report jobs read is a declared input: changing one Table 1 evaluation plans the tables that
    show it and the audit (which reads its per-item scores), and nothing else. (Content, not only the mtime:
    Snakemake ignores a newer mtime of a small input whose checksum it recorded.)"""
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(micro, folder, symlinks=True)
    evaluation = next((folder / "results" / "eval").glob("*/flan/lora/seed-7/mmlu.json"))
    record = json.loads(evaluation.read_text())
    record["stderr"] = min(100.0, record["stderr"] + 1.0)
    evaluation.write_text(json.dumps(record))
    done = _snakemake(folder, "-n", "--configfile", ".test/config.yaml")
    assert done.returncode == 0, done.stderr[-2000:]
    # Table 1 and Table 1x, whose LoRA row is Table 1's evaluations
    assert _planned(done) == {"table": 2, "audit": 1, "all": 1}, done.stdout[-3000:]
    assert {"output: results/table1.csv", "output: results/table1x.csv"} <= {
        line.strip().split(",")[0] for line in done.stdout.splitlines()}
