"""Bad input as a user meets it through the CLI: one line naming the key or file, exit 2, nothing written;
a checkpoint resumes only its own run; an adapter applies only to its own base model."""

import json

import pytest
import torch

from spiel.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """Exit code and error lines of ``python -m spiel ARGV`` (in process); never a traceback."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, "\n".join(line for line in err.splitlines() if line.startswith("error:"))


def train_args(setup, out, method="spiel-ag", settings=(), hp=("lr=1e-3", "rank=2")) -> list[str]:
    return ["train", "--model", str(setup / "model"), "--method", method, "--data", str(setup / "train.jsonl"),
            "--out", str(out), "--set", "epochs=1", "batch_size=4", "micro_batch_size=2", "max_length=64",
            *settings, "--hp", *hp]


@pytest.mark.parametrize("method,settings,hp,named", [
    ("spiel-ag", [], ["lr=1e-3", "update_intervall=4"], "update_intervall"),
    ("lora", [], ["lr=1e-3", "weight_decay=30", "update_interval=2"], "update_interval"),
    ("full", [], ["lr=1e-3", "rank=4"], "rank"),
    ("spiel-ag", ["dtype=float16"], ["lr=1e-3"], "dtype='float16': expected one of float32, bfloat16"),
    ("spiel-ag", ["gradient_checkpointing=maybe"], ["lr=1e-3"], "gradient_checkpointing='maybe': expected true"),
    ("spiel-ag", ["batch_size=3"], ["lr=1e-3"], "batch_size=3: must be a multiple of micro_batch_size=2"),
    ("spiel-ag", ["epochs=0"], ["lr=1e-3"], "epochs=0"),
    ("spiel-ag", ["epochs=1.5"], ["lr=1e-3"], "epochs=1.5: expected an integer"),
    ("spiel-ag", [], ["lr=0"], "lr=0.0: the learning rate must be positive"),
    ("spiel-ag", [], ["lr=fast"], "lr='fast': expected a number"),
    ("lora", [], ["rank=8"], "needs a learning rate"),
    ("spiel-ag", [], ["lr=1e-3", "schedule=cubic"], "schedule"),
    ("spiel-ag", [], ["lr=1e-3", "weight_decay=-1"], "weight_decay=-1.0"),
])
def test_options_that_would_do_nothing_are_refused(training_setup, tmp_path, capsys, method, settings, hp, named):
    out = tmp_path / "out"
    code, err = run_cli(capsys, *train_args(training_setup, out, method, settings, hp))
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_prepare_model_refuses_an_unknown_option(tmp_path, capsys):
    code, err = run_cli(capsys, "prepare-model", "--source", "tiny", "--set", "hiddn=64", "--out", str(tmp_path / "m"))
    assert code == 2 and "hiddn" in err and "hidden" in err and not (tmp_path / "m").exists()


def test_numbers_are_recorded_as_numbers_and_the_adapter_names_its_base(training_setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(capsys, *train_args(training_setup, out, hp=("lr=1e-3", "rank=2", "update_interval=2",
                                                                 "estimation_steps=1")))[0] == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["config"]["hp"] == {"lr": 0.001, "rank": 2, "update_interval": 2, "estimation_steps": 1}
    base = json.loads((out / "base_model.json").read_text())
    assert base["architecture"]["hidden_size"] == 32 and len(base["embedding_sha256"]) == 64


@pytest.fixture(scope="module")
def stopped_run(training_setup, tmp_path_factory):
    """A run stopped after 2 of 6 steps (its checkpoint in ``work``), with the CLI arguments that wrote it."""
    from spiel.train import TrainConfig, train

    root = tmp_path_factory.mktemp("stopped")
    config = TrainConfig(epochs=1, batch_size=4, micro_batch_size=2, max_length=64, checkpoint_every=1,
                         hp={"lr": 1e-3, "rank": 2})
    assert not train(training_setup / "model", "spiel-ag", training_setup / "train.jsonl", root / "out", config,
                     stop_after=2)["finished"]
    (root / "copy.pt").write_bytes((root / "out" / "checkpoint.pt").read_bytes())
    return root


def test_a_checkpoint_resumes_only_the_run_that_wrote_it(training_setup, stopped_run, capsys):
    checkpoint = stopped_run / "out" / "checkpoint.pt"
    settings = ["checkpoint_every=1"]
    code, err = run_cli(capsys, *train_args(training_setup, stopped_run / "out", settings=settings,
                                            hp=("lr=2e-3", "rank=2")))
    assert code == 2 and "settings.hp.lr: 0.001 → 0.002" in err and f"rm {checkpoint}" in err
    assert checkpoint.exists()  # refused, not replaced: the user decides
    code, _ = run_cli(capsys, *train_args(training_setup, stopped_run / "out", settings=settings))
    summary = json.loads((stopped_run / "out" / "train_summary.json").read_text())
    assert code == 0 and summary["finished"] and summary["config"]["hp"]["lr"] == 0.001


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_a_damaged_checkpoint_is_one_line(training_setup, stopped_run, tmp_path, capsys, damage):
    work = tmp_path / "work"
    work.mkdir()
    if damage == "truncated":
        blob = (stopped_run / "copy.pt").read_bytes()
        (work / "checkpoint.pt").write_bytes(blob[: len(blob) // 2])
    else:
        torch.save({"step": 3, "weights": torch.zeros(2)}, work / "checkpoint.pt")
    code, err = run_cli(capsys, *train_args(training_setup, tmp_path / "out"), "--work", str(work))
    assert code == 2 and str(work / "checkpoint.pt") in err and "start afresh" in err and len(err.splitlines()) == 1


def test_an_adapter_is_refused_on_another_base_model(training_setup, tmp_path, capsys):
    from conftest import CHAT_CORPUS

    from spiel.adapters import apply_adapters, load_base
    from spiel.identity import IDENTITY_FILE, IdentityMismatch
    from spiel.models import tiny_llama
    from spiel.train import TrainConfig, train

    adapter = tmp_path / "adapter"
    train(training_setup / "model", "lora", training_setup / "train.jsonl", adapter,
          TrainConfig(epochs=1, batch_size=4, micro_batch_size=4, max_length=64, hp={"lr": 1e-3, "rank": 2}))
    tiny_llama(tmp_path / "other", CHAT_CORPUS, seed=1, hidden=32)  # same shapes, other weights
    other, _ = load_base(tmp_path / "other", device="cpu")
    with pytest.raises(IdentityMismatch, match="embedding_sha256"):
        apply_adapters(other, [adapter])
    own, _ = load_base(training_setup / "model", torch.bfloat16, device="cpu")  # another dtype, the same base
    apply_adapters(own, [adapter])
    (adapter / IDENTITY_FILE).unlink()  # an adapter written before identities: applied, with a warning
    capsys.readouterr()
    apply_adapters(load_base(tmp_path / "other", device="cpu")[0], [adapter])
    assert "records no base model" in capsys.readouterr().err


GSM_ROWS = [{"split": "shot", "group": "gsm", "question": "1 + 1?", "cot_answer": "1 + 1 = 2. The answer is 2."},
            {"split": "test", "group": "gsm", "question": "2 + 3?", "answer": "5"},
            {"split": "test", "group": "gsm", "question": "4 + 4?", "answer": "8"}]


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def evaluate_args(setup, data, out, benchmark="gsm", *extra) -> list[str]:
    return ["evaluate", "--model", str(setup / "model"), "--benchmark", benchmark, "--data", str(data),
            "--out", str(out), "--device", "cpu", *extra]


@pytest.mark.parametrize("damage,named", [
    ("broken line", ":3: not valid JSON"),
    ("no answer", ":2: a gsm test row needs ['answer']"),
    ("no exemplar answer", ":1: a gsm shot row needs ['cot_answer']"),
    ("no group", ":2: expected a gsm row with a 'group'"),
    ("binary", ":1: not UTF-8 text"),
    ("folder", "a folder, not a JSONL file"),
])
def test_broken_evaluation_data_names_file_and_line(training_setup, tmp_path, capsys, damage, named):
    rows = [dict(r) for r in GSM_ROWS]
    data = tmp_path / "gsm.jsonl"
    if damage == "no answer":
        del rows[1]["answer"]
    elif damage == "no exemplar answer":
        del rows[0]["cot_answer"]
    elif damage == "no group":
        del rows[1]["group"]
    _jsonl(data, rows)
    if damage == "broken line":
        data.write_text(data.read_text()[:-20] + "\n")
    elif damage == "binary":
        data.write_bytes(b"\x8b\x1f\xc0\x00" * 64)
    elif damage == "folder":
        data.unlink()
        data.mkdir()
    code, err = run_cli(capsys, *evaluate_args(training_setup, data, tmp_path / "out.json"))
    assert code == 2 and f"{data}" in err and named in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out.json").exists()


def test_an_unknown_group_is_an_error_not_a_smaller_benchmark(training_setup, tmp_path, capsys):
    rows = [{"split": split, "group": group, "question": f"{group} {i}?", "choices": ["a", "b", "c", "d"],
             "answer": "A"} for group in ("anatomy", "astronomy") for i, split in enumerate(("shot", "test"))]
    data = _jsonl(tmp_path / "mmlu.jsonl", rows)
    code, err = run_cli(capsys, *evaluate_args(training_setup, data, tmp_path / "out.json", "mmlu",
                                               "--set", "groups=[anatomy, astronmy]"))
    assert code == 2 and "mmlu.groups: ['astronmy'] not in the data" in err and "anatomy, astronomy" in err


def test_an_incomplete_model_folder_or_adapter_is_one_line(training_setup, tmp_path, capsys):
    import shutil

    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(training_setup / "model" / "config.json", partial)
    code, err = run_cli(capsys, *train_args(training_setup, tmp_path / "out"), "--model", str(partial))
    assert code == 2 and f"model {partial}: no weights" in err
    data = _jsonl(tmp_path / "gsm.jsonl", GSM_ROWS)
    adapter = tmp_path / "adapter"
    assert run_cli(capsys, *train_args(training_setup, adapter, "lora"))[0] == 0
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # a copy cut short
    code, err = run_cli(capsys, *evaluate_args(training_setup, data, tmp_path / "out.json"), "--adapter", str(adapter))
    assert code == 2 and f"{weights}: not a whole safetensors file" in err


@pytest.mark.parametrize("damage", ["folder", "binary"])
def test_training_data_that_is_not_a_file_of_text(training_setup, tmp_path, capsys, damage):
    data = tmp_path / "train.jsonl"
    if damage == "folder":
        data.mkdir()
    else:
        data.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)))
    code, err = run_cli(capsys, *train_args(training_setup, tmp_path / "out"), "--data", str(data))
    assert code == 2 and str(data) in err and ("a folder" in err if damage == "folder" else "not UTF-8" in err)


def _eval_tree(root, value=40.0, benchmark=None) -> list[str]:
    """Table 2's evaluation files for one size (s), LoRA and seed 1, the Flan MMLU one with ``value`` /
    ``benchmark``; the table command's ``--result`` arguments."""
    from spiel.report.cells import cells

    results = []
    for cell in cells("table2", ["s"], ["lora"]):
        path = root / cell.size / cell.dataset / cell.method / f"{cell.benchmark}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        odd = (cell.dataset, cell.benchmark) == ("flan", "mmlu")
        record = {"benchmark": (benchmark or cell.benchmark) if odd else cell.benchmark,
                  "value": value if odd else 40.0, "stderr": 2.0}
        path.write_text(json.dumps(record))
        results.append(f"{cell.key}/1={path}")
    return results


@pytest.mark.parametrize("value,benchmark,named", [
    (float("nan"), None, "value=nan is not a score"), (250.0, None, "value=250.0 is not a score"),
    ("40.0", None, "value='40.0' is not a score"), (40.0, "gsm", "a result of benchmark 'gsm' where 'mmlu' belongs"),
])
def test_an_evaluation_file_that_is_not_a_result_stops_the_table(tmp_path, capsys, value, benchmark, named):
    results = _eval_tree(tmp_path / "eval", value, benchmark)
    out = tmp_path / "table2.csv"
    code, err = run_cli(capsys, "table", "--table", "table2", "--sizes", "s", "--methods", "lora",
                        "--result", *results, "--out", str(out))
    assert code == 2 and "s/flan/lora/mmlu.json" in err and named in err and not out.exists()
    results = _eval_tree(tmp_path / "eval")
    assert run_cli(capsys, "table", "--table", "table2", "--sizes", "s", "--methods", "lora",
                   "--result", *results, "--out", str(out))[0] == 0
    code, err = run_cli(capsys, "table", "--table", "table2", "--sizes", "s", "--methods", "lora",
                        "--result", *results, "s/lora/flan/gsm/1=x.json", "--out", str(out))
    assert code == 2 and "s/lora/flan/gsm/…: not a cell of table2" in err


def test_an_audit_of_a_missing_results_folder_fails(tmp_path, capsys):
    code, err = run_cli(capsys, "audit", "--results", str(tmp_path / "nothing"), "--out", str(tmp_path / "a.csv"))
    assert code == 2 and f"{tmp_path / 'nothing'}: no such folder" in err and not (tmp_path / "a.csv").exists()
    (tmp_path / "empty").mkdir()
    code, err = run_cli(capsys, "audit", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "a.csv"))
    assert code == 2 and "holds none of table1" in err


def test_a_probe_that_fails_of_a_python_error_is_not_out_of_memory(training_setup, tmp_path):
    """A memory probe whose data path happens to contain an OOM message fails of its error, not of memory."""
    from spiel.memory import ProbeSpec, run_probe

    folder = tmp_path / "cannot allocate memory"
    folder.mkdir()
    spec = ProbeSpec(str(training_setup / "model"), "lora", str(folder / "missing.jsonl"), steps=1, device="cpu",
                     settings={"batch_size": 2, "micro_batch_size": 2, "max_length": 32}, hp={"lr": 1e-3, "rank": 2},
                     timeout_s=120)
    probe = run_probe(spec, 8000)
    assert not probe.passed and probe.reason != "out of memory" and "no such training file" in probe.reason


def test_identity_samples_the_same_positions_on_every_device():
    """Evenly spaced integer positions, exact beyond 2^24 elements (where float spacing rounds per kernel)."""
    from spiel.identity import sample_positions

    n = 32_000 * 4_096  # LLaMA-2-7b's embedding
    picks = sample_positions(n)
    assert picks.dtype == torch.int64 and len(picks) == 4096 and picks[0] == 0 and picks[-1] == n - 1
    assert picks[1] == (n - 1) // 4095 and picks[2047] == 2047 * (n - 1) // 4095
    assert sample_positions(10).tolist() == list(range(10))
