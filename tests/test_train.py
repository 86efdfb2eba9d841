"""Training data format and the one training loop: Tülu masking, exact resume after a stop, every method."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from spiel import data
from spiel.methods import HYPERPARAMETERS, method
from spiel.models import tiny_tokenizer
from spiel.train import TrainConfig, lr_factor, optimizer_step, prepare, target_loss, train

CHAT = [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"},
        {"role": "user", "content": "Now double it."}, {"role": "assistant", "content": "10"}]
CORPUS = ["<|user|>\nAdd 2 and 3.\n<|assistant|>\n5</s>\n", "Now double it. The answer is 10."] * 30


def test_only_assistant_tokens_are_labelled():
    tokenizer = tiny_tokenizer(CORPUS, vocab_size=300)
    encoded = data.encode(CHAT, tokenizer, max_length=512)
    labelled = tokenizer.decode([t for t, y in zip(encoded["input_ids"], encoded["labels"], strict=True)
                                 if y != data.IGNORE])
    assert labelled == "5</s>\n10</s>\n"
    assert tokenizer.decode(encoded["input_ids"]) == ("<|user|>\nAdd 2 and 3.\n<|assistant|>\n5</s>\n"
                                                      "<|user|>\nNow double it.\n<|assistant|>\n10</s>\n")
    assert data.encode(CHAT, tokenizer, max_length=5) is None  # truncated before any reply: dropped


def test_bad_training_file_names_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n" + json.dumps({"messages": [{"role": "bot"}]}) + "\n")
    with pytest.raises(data.TrainDataError, match=r"train\.jsonl:2: expected a JSON object with a 'messages' list"):
        list(data.read_conversations(path))


def test_lr_schedule_warms_up_then_decays_linearly():
    assert [round(lr_factor(s, 10, 2), 3) for s in range(10)] == [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375,
                                                                   0.25, 0.125]


@pytest.fixture
def setup(training_setup):
    return training_setup


def hp_for(name: str, **hp) -> dict:
    """Small-run hyperparameters, those that method ``name`` takes (others are refused)."""
    small = {"lr": 1e-2, "rank": 2, "update_interval": 4, "estimation_steps": 1, **hp}
    return {k: v for k, v in small.items() if k in HYPERPARAMETERS[method(name).kind]}


def _config(name: str, **hp):
    return TrainConfig(epochs=2, batch_size=4, micro_batch_size=2, max_length=64, checkpoint_every=2,
                       hp=hp_for(name, **hp))


@pytest.mark.parametrize("name,dtype", [("spiel-ag", "float32"), ("spiel-ma", "float32"), ("lora", "float32"),
                                        ("qspiel-ag", "float32"), ("qspiel-ma", "float32"), ("qlora", "float32"),
                                        ("full", "bfloat16"), ("shira", "float32"), ("supertuning", "float32"),
                                        ("spiel-fixed", "float32")])
def test_resume_after_a_stop_equals_an_uninterrupted_run(setup, tmp_path, name, dtype):
    """Bit-identical resume, also where state is fp32 beside bf16 values (qSpIEL, qLoRA and bf16 FullIFT masters)."""
    config = _config(name)
    config.dtype = dtype
    whole = train(setup / "model", name, setup / "train.jsonl", tmp_path / "whole", config)
    assert whole["finished"] and whole["steps"] == 12
    partial = train(setup / "model", name, setup / "train.jsonl", tmp_path / "cut", config, stop_after=5)
    assert not partial["finished"] and (tmp_path / "cut" / "checkpoint.pt").exists()
    train(setup / "model", name, setup / "train.jsonl", tmp_path / "cut", config)
    a = load_file(next((tmp_path / "whole").glob("*.safetensors")))
    b = load_file(next((tmp_path / "cut").glob("*.safetensors")))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))
    losses = [json.loads(x)["loss"] for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", ["full", "lora", "spiel-ag"])
def test_target_loss_equals_the_full_logits_loss_and_gradient(setup, name):
    """The output layer applied at target positions only gives the loss and gradients of ``model(...).logits``."""
    run = prepare(setup / "model", name, setup / "train.jsonl", _config(name))
    _, (batch, *_) = run.micro_batches(0, {})
    assert 0 < int((batch["labels"] != data.IGNORE).sum()) < batch["labels"].numel()  # a partial mask
    model = run.trainable.model
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(loss):
        return loss.detach(), torch.autograd.grad(loss, params)

    torch.manual_seed(0)  # the same LoRA dropout masks in both passes
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    full = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                             reduction="sum", ignore_index=data.IGNORE)
    want, want_grads = loss_and_grads(full)
    torch.manual_seed(0)
    got, got_grads = loss_and_grads(target_loss(model, batch))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["full", "ia3", "qspiel-ag", "qlora"])
def test_every_method_trains(setup, tmp_path, name):
    summary = train(setup / "model", name, setup / "train.jsonl", tmp_path / name,
                    TrainConfig(epochs=1, batch_size=4, micro_batch_size=4, max_length=64,
                                hp=hp_for(name, lr=1e-3)))
    assert summary["finished"] and summary["steps"] == 6


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM", "SIGUSR1"])
def test_a_killed_training_job_resumes_to_the_same_adapter(setup, tmp_path, stop):
    """Stop the CLI mid-run — SIGKILL as a pre-emption would; SIGTERM (SLURM's time limit) and SIGUSR1 (its
    ``--signal`` warning) make it checkpoint the last completed step and exit 75 — rerun it: the same adapter as an
    uninterrupted run (issue 16.7)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def command(out: str) -> list[str]:
        return [sys.executable, "-m", "spiel", "train", "--model", str(setup / "model"), "--method", "spiel-ag",
                "--data", str(setup / "train.jsonl"), "--out", str(tmp_path / out),
                "--work", str(tmp_path / f"{out}.w"),
                "--set", "epochs=4", "batch_size=1", "micro_batch_size=1", "max_length=64", "checkpoint_every=1",
                "--hp", "lr=0.01", "rank=2", "update_interval=4", "estimation_steps=1"]

    subprocess.run(command("whole"), check=True, capture_output=True)
    job = subprocess.Popen(command("cut"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "cut.w" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 20):
        time.sleep(0.05)
    os.kill(job.pid, getattr(signal, stop))
    assert job.wait(timeout=60) == (-signal.SIGKILL if stop == "SIGKILL" else 75)
    assert (tmp_path / "cut.w" / "checkpoint.pt").exists() and not (tmp_path / "cut").exists()  # stopped mid-run
    if stop != "SIGKILL":  # the checkpoint is of the last step written to the metrics
        done = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
        assert torch.load(tmp_path / "cut.w" / "checkpoint.pt", weights_only=False)["step"] == done[-1] < 96
    subprocess.run(command("cut"), check=True, capture_output=True)
    a = load_file(next((tmp_path / "whole").glob("*.safetensors")))
    b = load_file(next((tmp_path / "cut").glob("*.safetensors")))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # once the adapter is written the work folder holds only its record: links to the output's files
    kept = sorted(p.relative_to(tmp_path / "cut.w") for p in (tmp_path / "cut.w").rglob("*") if p.is_file())
    assert [str(p) for p in kept if not p.is_relative_to("finished/output")] == ["finished/run.json"]
    outputs = sorted(p.relative_to(tmp_path / "cut") for p in (tmp_path / "cut").rglob("*") if p.is_file())
    assert [p.relative_to("finished/output") for p in kept if p.is_relative_to("finished/output")] == outputs
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 97))


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_run_whose_output_was_deleted_is_restored_not_trained_again(setup, tmp_path, monkeypatch):
    """SLURM reports a job that ends just after its time limit as TIMEOUT, and Snakemake deletes its outputs and
    retries it: the retry restores the output that the finished run kept in its work folder (hard links), without a
    training step, also where a stop signal came while it was being written; another fingerprint or code, or a
    damaged record, is discarded and the run trains."""
    import os
    import signal

    import spiel.finished
    import spiel.train

    out, work = tmp_path / "out", tmp_path / "work"
    config = _config("lora")
    keep = spiel.finished.keep

    def stopped_while_finishing(*args):  # SLURM's time limit after the last step: the output and record still land
        os.kill(os.getpid(), signal.SIGTERM)
        return keep(*args)

    with monkeypatch.context() as patch:
        patch.setattr(spiel.finished, "keep", stopped_while_finishing)
        train(setup / "model", "lora", setup / "train.jsonl", out, config, work=work)
    written = _files(out)
    assert all((work / "finished/output" / name).stat().st_ino == (out / name).stat().st_ino for name in written)
    shutil.rmtree(out)  # as Snakemake removes the outputs of a job it counts as failed

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    with monkeypatch.context() as patch:
        patch.setattr(spiel.train, "optimizer_step", no_training)
        summary = train(setup / "model", "lora", setup / "train.jsonl", out, config, work=work)
        assert summary["finished"] and _files(out) == written
        with pytest.raises(AssertionError, match="trained again"):  # another run's record is not restored
            train(setup / "model", "lora", setup / "train.jsonl", out, _config("lora", lr=2e-2), work=work)
        assert not (work / "finished").exists()
    train(setup / "model", "lora", setup / "train.jsonl", out, config, work=work)  # the same run, trained again
    assert _files(out).keys() == written.keys()
    (work / "finished/run.json").write_text("")  # cut short by a crash: not restored, and no crash
    with monkeypatch.context() as patch:
        patch.setattr(spiel.train, "optimizer_step", no_training)
        with pytest.raises(AssertionError, match="trained again"):
            train(setup / "model", "lora", setup / "train.jsonl", out, config, work=work)
    train(setup / "model", "lora", setup / "train.jsonl", out, config, work=work)
    with monkeypatch.context() as patch:  # other code: trained again
        patch.setattr(spiel.train, "optimizer_step", no_training)
        patch.setattr(spiel.train, "code_digest", lambda: "another version of the code")
        with pytest.raises(AssertionError, match="trained again"):
            train(setup / "model", "lora", setup / "train.jsonl", out, config, work=work)


def _weight_change(run, steps: int, optimizer=None) -> tuple[float, float]:
    """(‖W_T − W_0‖ over every parameter, fraction of the projection weights that changed) after ``steps``
    optimizer steps on the run's first batch."""
    model = run.trainable.model.train()
    start = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    _, micro = run.micro_batches(0, {})
    for _ in range(steps):
        if optimizer is None:
            optimizer_step(run.trainable, micro)
        else:
            for batch in micro:
                target_loss(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    moved = {n: p.detach().float() - start[n] for n, p in model.named_parameters()}
    projections = [d for n, d in moved.items() if "proj" in n]
    changed = sum(int((d != 0).sum()) for d in projections) / sum(d.numel() for d in projections)
    return float(sum((d ** 2).sum() for d in moved.values()) ** 0.5), changed


def test_bf16_full_finetuning_moves_the_weights_as_fp32_does(setup):
    """Issue 16.2: at FullIFT's lr 2e-5 an AdamW update is below half a bf16 ulp for most weights. Through fp32
    masters a bf16 model moves as far as an fp32 one over 30 steps (ratio of ‖W_T − W_0‖ ≈ 1, almost every weight
    changed); AdamW applied to the bf16 weights directly leaves most weights where they were (measured: 31 % of
    the projection weights changed, norm ratio 0.67)."""
    def run(dtype):
        return prepare(setup / "model", "full", setup / "train.jsonl",
                       TrainConfig(batch_size=4, micro_batch_size=4, max_length=64, dtype=dtype, hp={"lr": 2e-5}))

    fp32, _ = _weight_change(run("float32"), 30)
    bf16, bf16_changed = _weight_change(run("bfloat16"), 30)
    plain = run("bfloat16")
    naive, naive_changed = _weight_change(plain, 30, torch.optim.AdamW(plain.trainable.model.parameters(), lr=2e-5))
    assert 0.95 < bf16 / fp32 < 1.05 and bf16_changed > 0.95, (bf16, fp32, bf16_changed)
    assert naive / fp32 < 0.8 and naive_changed < 0.5, (naive, fp32, naive_changed)
    assert all(p.dtype == torch.bfloat16 for p in plain.trainable.model.parameters())


def test_qlora_adapter_is_bf16_with_fp32_masters(setup):
    """§4.1 / App. B: on a 4-bit base the PEFT parameters are stored in bf16; the optimizer updates fp32 copies."""
    run = prepare(setup / "model", "qlora", setup / "train.jsonl", _config("qlora"))
    lora = [p for p in run.trainable.model.parameters() if p.requires_grad]
    assert lora and all(p.dtype == torch.bfloat16 for p in lora)
    masters = run.trainable.masters
    assert [m.dtype for m in masters.optimized] == [torch.float32] * len(lora)
    run.trainable.model.train()
    _, micro = run.micro_batches(0, {})
    optimizer_step(run.trainable, micro)
    assert all(torch.equal(p, m.to(torch.bfloat16)) for p, m in masters.pairs)
    assert any(bool((m != m.to(torch.bfloat16).float()).any()) for _, m in masters.pairs)  # masters hold more


def test_the_requested_device_is_honoured_where_cuda_is_visible(setup, monkeypatch):
    """Issue 16.5: ``device=cpu`` (``memory --device cpu`` on a GPU host) trains on the CPU even when CUDA is
    visible; ``auto`` would pick CUDA (here a fake one, which fails to load)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = TrainConfig(batch_size=4, micro_batch_size=4, max_length=64, device="cpu", hp={"lr": 1e-3, "rank": 2})
    run = prepare(setup / "model", "spiel-ag", setup / "train.jsonl", config)
    assert {p.device.type for p in run.trainable.model.parameters()} == {"cpu"}
    with pytest.raises((RuntimeError, AssertionError, ValueError)):
        prepare(setup / "model", "spiel-ag", setup / "train.jsonl", dataclasses.replace(config, device="auto"))


@pytest.mark.parametrize("signal_at,completed", [(3, 0), (23, 5)])
def test_a_signal_inside_an_estimation_step_resumes_exactly(setup, tmp_path, monkeypatch, signal_at, completed):
    """A stop signal between two micro-batches of a SpIEL-AG estimation step (4 micro-batches per step, 6 steps;
    S = 4, γ = 2: phases over steps 1–2 and 5–6): the step is abandoned with what the estimator gathered from it — in
    a phase's first step (loss call 3) that includes its candidates, in its second (call 23) the partial sum — so the
    resumed run equals an uninterrupted one bit for bit."""
    import os
    import signal

    from spiel import train as train_module
    from spiel.signals import Stopped

    config = TrainConfig(epochs=1, batch_size=4, micro_batch_size=1, max_length=64, checkpoint_every=0,
                         hp={"lr": 1e-2, "rank": 2, "update_interval": 4, "estimation_steps": 2})
    train(setup / "model", "spiel-ag", setup / "train.jsonl", tmp_path / "whole", config)
    calls = []
    loss = train_module.target_loss

    def signalled(model, batch):
        calls.append(1)
        if len(calls) == signal_at:
            os.kill(os.getpid(), signal.SIGUSR1)
        return loss(model, batch)

    monkeypatch.setattr(train_module, "target_loss", signalled)
    with pytest.raises(Stopped, match=f"after step {completed} of 6"):
        train(setup / "model", "spiel-ag", setup / "train.jsonl", tmp_path / "cut", config)
    monkeypatch.setattr(train_module, "target_loss", loss)
    train(setup / "model", "spiel-ag", setup / "train.jsonl", tmp_path / "cut", config)
    a, b = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
