"""Held-out split and loss: disjoint from training and evaluation items; the loss is training's, per token."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from spiel import data
from spiel.cli import main
from spiel.decontamination import decontaminate
from spiel.heldout import ANSWER_MARGIN, exact_match, score, split, verifiable


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
    column = frame["flan_heldout_loss_delta"]
    assert column.tolist()[1] == round(-7 / 12, 4) and math.isnan(column[0])
    assert "(Δ -0.583 ± 0.118)" in markdown_heldout(frame, spreads)
    files["s/lora/flan/2"] = result("short", [1.0, 1.0])  # another held-out file: not paired, an error
    with pytest.raises(ValueError, match="scored other conversations than the reference"):
        build_heldout(["s"], ["original", "lora"], files)


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _question(question, answer, source="reasoning-gym:gcd"):
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "source": source}


def test_only_single_turn_reasoning_gym_questions_are_verifiable(tmp_path):
    path = _write(tmp_path / "h.jsonl", [
        _question("gcd of 4 and 6?", "2"),
        _question("Explain 'if'.", "An if statement…", source="pydoc_data:if"),
        {"messages": _question("a", "1")["messages"] + _question("b", "2")["messages"],
         "source": "reasoning-gym:gcd+reasoning-gym:lcm"},  # a two-turn Tülu chat: not one question
        _question("lcm of 2 and 3?", "6", source="reasoning-gym:lcm")])
    assert verifiable(path) == [(1, "gcd of 4 and 6?", "2"), (4, "lcm of 2 and 3?", "6")]


class _Scripted(torch.nn.Module):
    """A model whose greedy continuation of every prompt is ``tokens``, then ``tokens[-1]`` forever; it counts its
    forward calls."""

    def __init__(self, tokens, vocab):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokens, self.vocab, self.calls = tokens, vocab, 0

    def forward(self, input_ids, past_key_values=None, **kwargs):
        step = 0 if past_key_values is None else past_key_values
        logits = torch.zeros(len(input_ids), 1, self.vocab)
        logits[:, -1, self.tokens[min(step, len(self.tokens) - 1)]] = 1.0
        self.calls += 1
        return SimpleNamespace(logits=logits, past_key_values=step + 1)


def test_exact_match_ends_at_the_end_of_sequence_and_needs_it(training_setup):
    from spiel.adapters import load_base

    _, tokenizer = load_base(training_setup / "model")

    def encode(text):
        return tokenizer.encode(text, add_special_tokens=False)

    questions = [(1, "Add 3 and 4.", "The answer is  7.\n"), (2, "Add 3 and 5.", "The answer is 8.")]
    budget = max(len(encode(r)) for _, _, r in questions) + ANSWER_MARGIN
    answer = encode("The answer is 7.")
    ends = _Scripted([*answer, tokenizer.eos_token_id, *encode(" more")], len(tokenizer))
    samples = exact_match(ends, tokenizer, questions)
    assert [s["exact_match"] for s in samples] == [1, 0] and [s["doc_id"] for s in samples] == [1, 2]
    assert samples[0]["prediction"] == "The answer is 7." and samples[0]["ended"]  # nothing after end-of-sequence
    assert ends.calls == len(answer) + 1  # the batch stopped when every row had ended
    # the same answer followed by spaces and never an end-of-sequence: it did not end within the budget
    runs_on = _Scripted([*answer, *encode(" ")], len(tokenizer))
    samples = exact_match(runs_on, tokenizer, questions)
    assert [s["exact_match"] for s in samples] == [0, 0] and not samples[0]["ended"]
    assert samples[0]["prediction"].startswith("The answer is 7.") and runs_on.calls == budget


def test_exact_match_answers_each_question_as_a_greedy_loop_on_training_s_prompt(training_setup):
    from spiel.adapters import load_base

    model, tokenizer = load_base(training_setup / "model")
    model.eval()
    questions = [(1, "Add 1 and 2.", "The answer is 3."), (2, "Add 10 and 11, then tell me.", "x"),
                 (3, "Add 5 and 6.", "The answer is 11.")]  # prompts of different lengths share a left-padded batch
    samples = exact_match(model, tokenizer, questions)
    budget = max(len(tokenizer.encode(r, add_special_tokens=False)) for _, _, r in questions) + ANSWER_MARGIN
    for (_, question, reference), sample in zip(questions, samples, strict=True):
        text = data.segments([{"role": "user", "content": question}], tokenizer.eos_token)[0][0]
        assert text == f"<|user|>\n{question}\n<|assistant|>\n"  # as training formats a user turn
        ids = tokenizer.encode(text, add_special_tokens=False)
        answer = []
        with torch.no_grad():
            for _ in range(budget):  # no cache, no padding
                token = int(model(input_ids=torch.tensor([ids + answer])).logits[0, -1].argmax())
                if token == tokenizer.eos_token_id:
                    break
                answer.append(token)
        assert sample["prediction"] == tokenizer.decode(answer, skip_special_tokens=True)
        assert sample["exact_match"] == int(" ".join(sample["prediction"].split()) == reference)


def test_the_heldout_result_scores_exact_match_beside_the_loss(training_setup, tmp_path):
    from spiel.adapters import load_base

    model, tokenizer = load_base(training_setup / "model")
    path = _write(tmp_path / "h.jsonl", [_question("Add 1 and 2.", "The answer is 3."),
                                         _question("Explain 'if'.", "An if statement.", source="pydoc_data:if"),
                                         _question("Add 2 and 3.", "The answer is 5."),
                                         _question("Add " + "1 and " * 40 + "2.", "The answer is 42.")])
    result = score(model.eval(), tokenizer, path, max_length=64)
    em = result["exact_match"]
    assert result["n_items"] == 3 and em["n_items"] == 2  # the last answer lies beyond max_length: neither scores it
    assert [s["doc_id"] for s in em["samples"]] == [1, 3]
    hits = [100.0 * s["exact_match"] for s in em["samples"]]
    assert em["value"] == pytest.approx(sum(hits) / 2)
    assert em["stderr"] == pytest.approx(abs(hits[0] - hits[1]) / 2)  # the standard error of two values
    assert "exact_match" not in score(model, tokenizer, path, max_length=64, answers=False)
    assert "exact_match" not in score(model, tokenizer, _write(tmp_path / "a.jsonl", [
        _question("Explain 'if'.", "An if statement.", source="pydoc_data:if")]), max_length=64)


def test_the_heldout_table_pairs_exact_match_with_original_where_a_split_has_verifiable_answers(tmp_path):
    from spiel.report.tables import build_heldout, markdown_heldout

    def result(name, hits, losses=(1.0, 1.0, 1.0, 1.0)):
        path = tmp_path / f"{name}.json"
        record = {"benchmark": "heldout", "value": sum(losses) / 4, "stderr": 0.1, "data_file": "h.jsonl",
                  "samples": [{"doc_id": i, "score": x} for i, x in enumerate(losses, 1)]}
        if hits is not None:
            values = [100.0 * h for h in hits]
            record["exact_match"] = {"value": sum(values) / 4, "stderr": 5.0, "n_items": 4,
                                     "samples": [{"doc_id": i, "exact_match": h} for i, h in enumerate(hits, 1)]}
        path.write_text(json.dumps(record))
        return path

    files = {"s/original/flan/1": result("base", [0, 0, 1, 0]), "s/lora/flan/1": result("lora", [1, 1, 1, 0]),
             "s/original/alpaca/1": result("base-a", None), "s/lora/alpaca/1": result("lora-a", None)}
    frame, sources, spreads = build_heldout(["s"], ["original", "lora"], files)
    assert frame["flan_heldout_em"].tolist() == [25.0, 75.0]
    assert frame["flan_heldout_em_delta"].tolist()[1] == 50.0  # differences 100, 100, 0, 0
    assert spreads["s/LoRA/flan_heldout_em"]["delta"]["noise"] == pytest.approx(100 / math.sqrt(3) / 2)
    assert frame["alpaca_heldout_em"].isna().all() and "s/LoRA/alpaca_heldout_em" not in sources
    table = markdown_heldout(frame, spreads)
    assert "Flan v2 held-out exact match (%), n = 4 (Δ" in table and "GPT4-Alpaca held-out exact match" not in table
    assert "75.0 ± 5.0 (Δ +50.0 ± 28.9)" in table
    # a seed's file from before exact match was scored, beside one with it: an error, not a silent blank
    with pytest.raises(ValueError, match="some seeds' files score held-out exact match"):
        build_heldout(["s"], ["original", "lora"], {**files, "s/lora/flan/2": result("old", None)})
    with pytest.raises(ValueError, match="scored for one of lora and original only"):
        build_heldout(["s"], ["original", "lora"], {**files, "s/original/flan/1": result("old", None)})
    bad = result("bad", [1, 1, 1, 1])
    record = json.loads(bad.read_text())
    record["exact_match"]["value"] = 101.0
    bad.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"exact_match\.value=101\.0 is out of range"):
        build_heldout(["s"], ["original", "lora"], {**files, "s/lora/flan/1": bad})
