"""Held-out split and loss: disjoint from training and evaluation items; the loss is training's, per token."""

from __future__ import annotations

import json
import math

import pytest
import torch

from spiel import data
from spiel.cli import main
from spiel.decontamination import decontaminate
from spiel.heldout import score, split


def _conversations(path):
    return [json.loads(line)["messages"] for line in path.read_text().splitlines()]


def test_the_heldout_split_is_disjoint_from_training_and_evaluation_items(tmp_path):
    evaluation = tmp_path / "gsm.jsonl"
    assert main(["prepare-eval", "--benchmark", "gsm", "--source", "reasoning-gym", "--set", "n=20",
                 "--out", str(evaluation)]) == 0
    train, heldout = tmp_path / "train.jsonl", tmp_path / "heldout.jsonl"
    assert main(["prepare-train", "--dataset", "flan", "--set", "n=30", "--exclude", str(evaluation), "--heldout",
                 "8", "--heldout-out", str(heldout), "--out", str(train)]) == 0
    kept, held = _conversations(train), _conversations(heldout)
    assert len(held) == 8 and len(kept) >= 30 - 8  # n conversations to train on, the held-out ones besides
    assert not {json.dumps(m) for m in kept} & {json.dumps(m) for m in held}
    rows = [{"messages": m} for m in held]
    assert decontaminate(rows, [evaluation])[1] == 0  # no held-out conversation overlaps an evaluation item
    # a held-out conversation equal to a training one is dropped, not scored as unseen
    twin = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    other = {"messages": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "no"}]}
    outcomes = [split([twin, dict(twin), other], 1, seed) for seed in range(12)]
    assert all(row not in kept for kept, held in outcomes for row in held)
    assert {len(held) for _, held in outcomes} == {0, 1}  # a drawn twin is dropped; the other row is held out


def test_the_heldout_loss_is_the_training_loss_per_target_token(training_setup, tmp_path):
    from spiel.adapters import load_base

    model, tokenizer = load_base(training_setup / "model")
    conversations = _conversations(training_setup / "train.jsonl")[:3]
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations))
    result = score(model.eval(), tokenizer, path, max_length=64)
    assert result["n_items"] == 3 and [s["doc_id"] for s in result["samples"]] == [1, 2, 3]
    for sample, messages in zip(result["samples"], conversations, strict=True):
        example = data.encode(messages, tokenizer, 64)
        ids, labels = torch.tensor([example["input_ids"]]), torch.tensor(example["labels"])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        keep = labels[1:] != data.IGNORE
        expected = torch.nn.functional.cross_entropy(logits[keep], labels[1:][keep]).item()
        assert math.isclose(sample["score"], expected, rel_tol=1e-5) and sample["tokens"] == int(keep.sum())
    losses = [s["score"] for s in result["samples"]]
    mean = sum(losses) / 3
    assert math.isclose(result["value"], mean)
    assert math.isclose(result["stderr"], math.sqrt(sum((x - mean) ** 2 for x in losses) / 2 / 3))


def test_the_heldout_table_pairs_each_method_with_original_on_the_same_conversations(tmp_path):
    from spiel.report.tables import build_heldout, markdown_heldout

    def result(name, scores):
        path = tmp_path / f"{name}.json"
        samples = [{"doc_id": i, "score": x} for i, x in enumerate(scores, 1)]
        mean = sum(scores) / len(scores)
        path.write_text(json.dumps({"benchmark": "heldout", "value": mean, "stderr": 0.5, "data_file": "h.jsonl",
                                    "samples": samples}))
        return path

    files = {"s/original/flan/1": result("base", [1.0, 2.0, 3.0]),
             "s/lora/flan/1": result("lora1", [0.5, 2.0, 2.0]),  # differences −0.5, 0, −1
             "s/lora/flan/2": result("lora2", [1.0, 1.0, 2.0])}  # differences 0, −1, −1
    frame, _, spreads = build_heldout(["s"], ["original", "lora"], files)
    delta = spreads["s/LoRA/flan_heldout_loss"]["delta"]
    assert delta["runs"] == pytest.approx([-0.5, -2 / 3])
    assert delta["stderr"][0] == pytest.approx(0.5 / math.sqrt(3))  # sd of (−0.5, 0, −1) is 0.5
    assert delta["mean"] == pytest.approx(-7 / 12) and delta["noise"] == pytest.approx(math.sqrt(2) / 12)
    assert frame["flan_heldout_delta"].tolist()[1] == round(-7 / 12, 4) and math.isnan(frame["flan_heldout_delta"][0])
    assert "(Δ -0.583 ± 0.118)" in markdown_heldout(frame, spreads)
    files["s/lora/flan/2"] = result("short", [1.0, 1.0])  # another held-out file: not paired, an error
    with pytest.raises(ValueError, match="scored other conversations than the reference"):
        build_heldout(["s"], ["original", "lora"], files)
