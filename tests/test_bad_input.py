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
    from spiel.adapters import apply_adapters, load_base
    from spiel.identity import IDENTITY_FILE, IdentityMismatch
    from spiel.models import tiny_llama
    from spiel.train import TrainConfig, train

    from conftest import CHAT_CORPUS

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
