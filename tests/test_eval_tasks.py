"""The five benchmarks run through the real lm-eval tasks with a scripted model whose answers are known."""

from __future__ import annotations

import json
import random

import pytest
import torch
from lm_eval.api.model import LM

from spiel.evaluate.protocol import protocol
from spiel.evaluate.run import run
from spiel.evaluate.sources import DataError, gsm_from_jsonl, mmlu_from_csv
from spiel.jsonl import JsonlError
from spiel.provenance import write_jsonl


class Scripted(LM):
    """Answers by looking up the last question of the prompt in a table: a letter for log-likelihood
    requests (that letter is the most likely), a list of completions for generation."""

    def __init__(self, answers: dict[str, object]):
        super().__init__()
        self.answers = answers
        self.contexts: list[str] = []
        self.calls: dict[str, int] = {}

    def _lookup(self, context: str):
        self.contexts.append(context)
        key = max((k for k in self.answers if k in context), key=context.rfind)
        return key, self.answers[key]

    def loglikelihood(self, requests):
        out = []
        for request in requests:
            context, continuation = request.args
            _, letter = self._lookup(context)
            out.append((-0.5 if continuation == f" {letter}" else -3.0, False))
        return out

    def generate_until(self, requests):
        """The scripted completion, cut at the request's ``until`` strings as lm-eval's HFLM cuts its output."""
        out = []
        for request in requests:
            key, completions = self._lookup(request.args[0])
            i = self.calls.get(key, 0)
            self.calls[key] = i + 1
            text = completions[i % len(completions)]
            for stop in request.args[1].get("until", []):
                text = text.split(stop)[0]
            out.append(text)
        return out

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError


def _mmlu_row(split, group, question, answer):
    return {"split": split, "group": group, "question": question, "choices": ["w", "x", "y", "z"],
            "answer": answer, "source": "fixture"}


def test_mmlu_two_of_three_with_leave_one_out_shots(tmp_path):
    rows = [_mmlu_row("shot", "astronomy", f"Shot question {i}?", "ABCD"[i]) for i in range(3)]
    rows += [_mmlu_row("test", "astronomy", "Q-one?", "A"), _mmlu_row("test", "astronomy", "Q-two?", "B"),
             _mmlu_row("test", "college_physics", "Q-three?", "D"),
             _mmlu_row("shot", "college_physics", "Q-three?", "D"), _mmlu_row("dev", "astronomy", "Q-dev?", "C")]
    write_jsonl(rows, tmp_path / "mmlu.jsonl")
    lm = Scripted({"Q-one?": "A", "Q-two?": "C", "Q-three?": "D"})
    result = run(lm, tmp_path / "mmlu.jsonl", protocol("mmlu", {"shots": 2}))
    assert result["n_items"] == 3
    assert result["value"] == pytest.approx(200 / 3)
    assert result["groups"]["astronomy"]["value"] == pytest.approx(50.0)
    first = next(s for s in result["samples"] if "Q-one?" in s["prompt"].split("\n\n")[-1])
    assert first["prompt"] == (
        "The following are multiple choice questions (with answers) about astronomy.\n\n"
        "Shot question 0?\nA. w\nB. x\nC. y\nD. z\nAnswer: A\n\n"
        "Shot question 1?\nA. w\nB. x\nC. y\nD. z\nAnswer: B\n\n"
        "Q-one?\nA. w\nB. x\nC. y\nD. z\nAnswer:")
    assert first["extracted"] == "A" and first["score"] == 1.0
    physics = next(s for s in result["samples"] if s["group"] == "college_physics")
    assert "Answer: D\n\n" not in physics["prompt"]  # an item is never its own exemplar


def test_mmlu_items_of_a_split_share_exemplars_from_outside_it_when_shots_are_items_too(tmp_path):
    """The offline MMLU's layout: a subject's five questions are its shots, the first three its test items and
    the other two its dev items. Every test item sees the two dev questions as exemplars (one shared prefix, as
    with the paper's fixed dev exemplars), every dev item two test questions, and no item sees its own."""
    questions = [(f"Q{i}?", "ABCDA"[i]) for i in range(5)]
    rows = [_mmlu_row("shot", "astronomy", q, a) for q, a in questions]
    rows += [_mmlu_row("test" if i < 3 else "dev", "astronomy", q, a) for i, (q, a) in enumerate(questions)]
    write_jsonl(rows, tmp_path / "mmlu.jsonl")

    def exemplars(split):
        result = run(Scripted({q: a for q, a in questions}), tmp_path / "mmlu.jsonl",
                     protocol("mmlu", {"shots": 2, "split": split}))
        return {s["prompt"].split("\n\n")[-1].split("\n")[0]: [block.split("\n")[0] for block in
                                                               s["prompt"].split("\n\n")[1:-1]]
                for s in result["samples"]}

    assert exemplars("test") == {"Q0?": ["Q3?", "Q4?"], "Q1?": ["Q3?", "Q4?"], "Q2?": ["Q3?", "Q4?"]}
    assert exemplars("dev") == {"Q3?": ["Q0?", "Q1?"], "Q4?": ["Q0?", "Q1?"]}
    # at more shots than the split leaves, the split's other items follow, never the item itself
    result = run(Scripted({q: a for q, a in questions}), tmp_path / "mmlu.jsonl",
                 protocol("mmlu", {"shots": 4, "split": "test"}))
    first = next(s for s in result["samples"] if s["prompt"].endswith("Q0?\nA. w\nB. x\nC. y\nD. z\nAnswer:"))
    assert [b.split("\n")[0] for b in first["prompt"].split("\n\n")[1:-1]] == ["Q3?", "Q4?", "Q1?", "Q2?"]


def test_mmlu_dev_split_is_the_search_metric(tmp_path):
    rows = [_mmlu_row("test", "astronomy", "Q-test?", "A"), _mmlu_row("dev", "astronomy", "Q-dev?", "C")]
    write_jsonl(rows, tmp_path / "mmlu.jsonl")
    result = run(Scripted({"Q-test?": "B", "Q-dev?": "C"}), tmp_path / "mmlu.jsonl",
                 protocol("mmlu", {"shots": 0, "split": "dev"}))
    assert (result["n_items"], result["value"]) == (1, 100.0)


def test_gsm_exact_match_on_last_number(tmp_path):
    shot = {"split": "shot", "group": "gsm", "question": "1+1?", "cot_answer": "1+1=2. So the answer is 2.",
            "source": "fixture"}
    items = [{"split": "test", "group": "gsm", "question": q, "answer": a, "source": "fixture"}
             for q, a in (("Apples?", "1234"), ("Pears?", "7"), ("Plums?", "12"))]
    write_jsonl([shot, *items], tmp_path / "gsm.jsonl")
    lm = Scripted({"Apples?": [" 1,000 + 234 = 1,234. So the answer is 1,234."],
                   "Pears?": [" She pays $7.00. So the answer is $7."], "Plums?": [" So the answer is 13."]})
    result = run(lm, tmp_path / "gsm.jsonl", protocol("gsm", {"shots": 1}))
    assert result["value"] == pytest.approx(200 / 3)
    assert sorted(s["extracted"] for s in result["samples"]) == ["1234", "13", "7"]
    assert lm.contexts[0].startswith("Answer the following questions.\nQuestion: 1+1?\nAnswer: 1+1=2. So the answer")
    assert lm.contexts[0].endswith("\nAnswer:")


@pytest.mark.parametrize(("after_text", "value", "empty"), [(False, 0.0, 2), (True, 50.0, 0)])
def test_a_completion_opening_with_a_newline_is_empty_only_without_stop_after_text(tmp_path, after_text, value,
                                                                                  empty):
    """GSM stops at "\n": a model that opens with a newline ends its answer at once, unless the stop counts only
    after the first non-blank character."""
    items = [{"split": "test", "group": "gsm", "question": q, "answer": a, "source": "fixture"}
             for q, a in (("Apples?", "4"), ("Pears?", "7"))]
    write_jsonl(items, tmp_path / "gsm.jsonl")
    lm = Scripted({"Apples?": ["\n2 + 2 = 4. So the answer is 4.\nQuestion: more"], "Pears?": ["\n\nSo it is 8.\n"]})
    result = run(lm, tmp_path / "gsm.jsonl", protocol("gsm", {"shots": 0, "stop_after_text": after_text}))
    assert result["value"] == value and result["empty_completions"] == {"empty": empty, "of": 2}
    outputs = sorted(s["output"] for s in result["samples"])
    assert outputs == (["", ""] if not after_text else ["\n\nSo it is 8.", "\n2 + 2 = 4. So the answer is 4."])


def test_stop_after_text_stops_each_row_of_a_batch_after_its_first_word():
    from conftest import CHAT_CORPUS

    from spiel.evaluate.stops import NoEndBeforeText, StopAfterText, truncate
    from spiel.models import tiny_tokenizer

    assert truncate("\n\n42\nnext", ["\n"], after_text=True) == "\n\n42"
    assert truncate("\n\n42\nnext", ["\n"], after_text=False) == ""
    assert truncate("   ", ["\n"], after_text=True) == "   "
    tokenizer = tiny_tokenizer(CHAT_CORPUS)  # byte-level BPE: newlines and spaces are tokens of their own
    prompt = tokenizer(["Q: 1+1?"], return_tensors="pt").input_ids
    rows = [tokenizer("\n", add_special_tokens=False).input_ids, tokenizer("\n2\n", add_special_tokens=False).input_ids]
    width = max(map(len, rows))
    pad = tokenizer(" ", add_special_tokens=False).input_ids[0]
    generated = torch.tensor([[pad] * (width - len(r)) + r for r in rows])  # left-padded with blanks
    ids = torch.cat([prompt.repeat(2, 1), generated], dim=1)
    done = StopAfterText(tokenizer, ["\n"], prompt.shape[1])(ids, None)
    assert done.tolist() == [False, True]  # a lone newline goes on; "\n2\n" has its answer and stops
    scores = torch.zeros(2, len(tokenizer))
    held = NoEndBeforeText(tokenizer, [tokenizer.eos_token_id], prompt.shape[1])(ids, scores.clone())
    assert held[0, tokenizer.eos_token_id] == -torch.inf  # no end before the answer's first word
    end = tokenizer.eos_token_id
    assert torch.equal(held[1], scores[1]) and torch.equal(held[0, :end], scores[0, :end])


def test_bbh_is_the_mean_over_tasks(tmp_path):
    rows = [{"split": "shot", "group": task, "input": f"{task} shot", "target": "So the answer is (A).",
             "description": f"About {task}.", "source": "fixture"} for task in ("alpha", "beta")]
    rows += [{"split": "test", "group": "alpha", "input": "alpha-1", "target": "(A)", "source": "fixture"},
             {"split": "test", "group": "alpha", "input": "alpha-2", "target": "(B)", "source": "fixture"},
             {"split": "test", "group": "beta", "input": "beta-1", "target": "valid", "source": "fixture"}]
    write_jsonl(rows, tmp_path / "bbh.jsonl")
    lm = Scripted({"alpha-1": [" Let's think. So the answer is (A)."], "alpha-2": [" So the answer is (C)."],
                   "beta-1": [" So the answer is valid."]})
    result = run(lm, tmp_path / "bbh.jsonl", protocol("bbh", {"shots": 1}))
    assert result["value"] == pytest.approx(75.0)  # (1/2 + 1/1) / 2 tasks, not 2/3 of items
    prompt = next(c for c in lm.contexts if c.endswith("Q: alpha-1\nA:"))
    assert prompt.startswith("About alpha.\n\nQ: alpha shot\nA: Let's think step by step.\nSo the answer is (A).")


def test_tydiqa_f1_mean_over_languages(tmp_path):
    def row(split, lang, question, answers, context="Paris is the capital of France ."):
        return {"split": split, "group": lang, "context": context, "question": question, "answers": answers,
                "source": "fixture"}

    rows = [row("shot", "english", "Shot?", ["France"]), row("shot", "finnish", "Shot?", ["Ranska"]),
            row("test", "english", "Capital?", ["Paris"]), row("test", "english", "Country?", ["France"]),
            row("test", "finnish", "Pääkaupunki?", ["Helsinki city", "Helsinki"])]
    write_jsonl(rows, tmp_path / "tydiqa.jsonl")
    lm = Scripted({"Capital?": [" The Paris\n"], "Country?": [" France and Spain"], "Pääkaupunki?": [" Helsinki"]})
    result = run(lm, tmp_path / "tydiqa.jsonl", protocol("tydiqa", {"max_context_tokens": 3}))
    # english: F1("The Paris", Paris) = 1; F1("France and Spain", France) = 2·(1/3·1)/(1/3+1) = 0.5 → 75
    # finnish: max(F1 vs "Helsinki city" = 2/3, F1 vs "Helsinki" = 1) = 1 → 100; mean over languages 87.5
    assert result["groups"]["english"]["value"] == pytest.approx(75.0)
    assert result["value"] == pytest.approx(87.5)
    assert "Passage: Paris is the\nQuestion: Shot?\nAnswer: France\n\n" in lm.contexts[0]  # truncated, 1-shot


def test_humaneval_pass_at_1_from_sandboxed_samples(tmp_path):
    def problem(task_id, name, body):
        return {"split": "test", "group": "humaneval", "task_id": task_id, "entry_point": name,
                "prompt": f"def {name}(a, b):\n    \"\"\"{body}\"\"\"\n",
                "test": "def check(f):\n    assert f(2, 3) == " + ("5" if name == "add" else "6"), "source": "fixture"}

    write_jsonl([problem("t/0", "add", "Sum."), problem("t/1", "mul", "Product.")], tmp_path / "he.jsonl")
    lm = Scripted({"Sum.": ["    return a + b\n", "    return a - b\n"],
                   "Product.": ["    return a * b\n", "    while True:\n        pass\n"]})
    result = run(lm, tmp_path / "he.jsonl", protocol("humaneval", {"n_samples": 2, "timeout_s": 2}))
    assert result["value"] == pytest.approx(50.0)  # each problem: 1 of 2 samples passes
    statuses = sorted(tuple(s["extracted"]) for s in result["samples"])
    assert statuses == [("passed", "failed"), ("passed", "timeout")]
    assert result["protocol"]["temperature"] == 0.1 and result["protocol"]["stop"][0] == "\nclass"


def test_items_are_drawn_per_group_with_the_seed(tmp_path):
    rows = [{"split": "test", "group": "gsm", "question": f"Item {i}?", "answer": str(i), "source": "fixture"}
            for i in range(30)]
    write_jsonl(rows, tmp_path / "gsm.jsonl")
    lm = Scripted({f"Item {i}?": [f" So the answer is {i}."] for i in range(30)})
    result = run(lm, tmp_path / "gsm.jsonl", protocol("gsm", {"shots": 0, "max_items": 5, "seed": 7}))
    expected = sorted(random.Random(7).sample(range(30), 5))
    assert [s["extracted"] for s in result["samples"]] == [str(i) for i in expected]
    assert result["value"] == 100.0 and result["n_items"] == 5


def test_unknown_protocol_key_names_the_key():
    with pytest.raises(ValueError, match=r"config\.gsm: unknown key\(s\) \['shot'\]"):
        protocol("gsm", {"shot": 3}, where="config")


@pytest.mark.parametrize(("key", "value", "bound", "inside"),
                         [("batch_size", 0, "at least 1", 1), ("draft_tokens", -1, "at least 0", 0),
                          ("max_new_tokens", 0, "at least 1", 1), ("top_p", 0.0, "more than 0", 0.5),
                          ("top_p", 1.5, "at most 1", 1.0), ("timeout_s", 0.0, "more than 0", 0.5)])
def test_a_protocol_number_out_of_its_range_names_the_key(key, value, bound, inside):
    """The config schema's bounds hold for ``--set`` overrides too (which the schema does not see)."""
    with pytest.raises(ValueError, match=rf"--set\.humaneval {key}={value}: expected {bound}$"):
        protocol("humaneval", {key: value}, where="--set")
    assert getattr(protocol("humaneval", {key: inside}, where="--set"), key) == inside


def test_data_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "test.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "x #### 1"}) + "\n{not json\n")
    with pytest.raises(JsonlError, match=r"test\.jsonl:2: not valid JSON"):
        gsm_from_jsonl(bad)
    (tmp_path / "mmlu" / "dev").mkdir(parents=True)
    (tmp_path / "mmlu" / "dev" / "anatomy_dev.csv").write_text("q,a,b,c,d,A\nq2,a,b,c,d,E\n")
    with pytest.raises(DataError, match=r"anatomy_dev\.csv:2: expected question, 4 options, answer letter"):
        mmlu_from_csv(tmp_path / "mmlu")
    with pytest.raises(DataError, match="does not exist"):
        gsm_from_jsonl(tmp_path / "missing.jsonl")


def test_mmlu_csv_scores_val_as_the_development_set(tmp_path):
    """Issue 16.16: Hendrycks' data/{dev,val,test}/<subject>_<split>.csv (no header, as in data.tar). Exemplars come
    from dev/, the hyperparameter-search split ("dev", App. D) from val/ as the authors' --eval_dev does, and the
    reported split from test/."""
    import csv

    for split, count in (("dev", 5), ("val", 3), ("test", 4)):
        for subject in ("anatomy", "virology"):
            folder = tmp_path / "data" / split
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / f"{subject}_{split}.csv").open("w", newline="") as handle:
                csv.writer(handle).writerows([[f"{subject} {split} q{i}, with a comma", "a", "b", "c", "d",
                                               "ABCD"[i % 4]] for i in range(count)])
    rows = mmlu_from_csv(tmp_path / "data")
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("shot", "dev", "test")}
    assert {s: len(v) for s, v in by_split.items()} == {"shot": 10, "dev": 6, "test": 8} and len(rows) == 24
    assert all(" val " in r["question"] for r in by_split["dev"]) and by_split["dev"][1]["answer"] == "B"
    assert by_split["test"][0] == {"split": "test", "group": "anatomy", "question": "anatomy test q0, with a comma",
                                   "choices": ["a", "b", "c", "d"], "answer": "A", "source": "anatomy_test.csv:1"}
