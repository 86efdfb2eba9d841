"""Instruction-tuning data: stand-ins, paper file formats, decontamination against evaluation items."""

from __future__ import annotations

import json

import pytest

from spiel.cli import main
from spiel.data import TrainDataError
from spiel.decontamination import NgramIndex, conversation_text, decontaminate
from spiel.evaluate import sources
from spiel.instruct import FLAN_FAMILIES, rows_for, standin


def test_standins_have_the_roles_of_the_paper_datasets():
    flan, alpaca, tulu = (standin(name, n, seed=3) for name, n in (("flan", 36), ("alpaca", 20), ("tulu", 40)))
    assert [len(x) for x in (flan, alpaca, tulu)] == [36, 20, 40]
    assert {r["source"].split(":")[1] for r in flan} == set(FLAN_FAMILIES)  # one task per family, all used
    assert {r["source"].split(":")[0] for r in alpaca} == {"codeio", "pydoc_data"}
    assert any(len(r["messages"]) == 4 for r in tulu)  # two-turn conversations in the mixture
    assert standin("flan", 36, seed=3) == flan  # seeded
    for row in flan + alpaca + tulu:
        assert "bigbench" not in row["source"] and "gsm" not in row["source"]


def test_decontamination_drops_exactly_the_overlapping_examples(tmp_path):
    question = "Which of the following is the body cavity that contains the pituitary gland in humans?"
    eval_file = tmp_path / "mmlu.jsonl"
    eval_file.write_text(json.dumps({"split": "test", "group": "anatomy", "question": question, "answer": "A"}) + "\n")
    clean = {"messages": [{"role": "user", "content": "Name a gland."}, {"role": "assistant", "content": "Thyroid."}]}
    leaked = {"messages": [{"role": "user", "content": f"Q: {question.upper()}"},
                           {"role": "assistant", "content": "Cranial."}]}
    kept, dropped = decontaminate([clean, leaked], [eval_file])
    assert kept == [clean] and dropped == 1


def test_default_training_data_is_disjoint_from_the_embedded_evaluation_items():
    """No 13-gram (or whole short question) of MMLU or HumanEval items occurs in the default stand-ins."""
    index = NgramIndex.from_rows(sources.mmlu_from_lm_eval(3) + sources.humaneval_rows())
    assert len(index) > 10_000
    for name, n in (("flan", 48), ("alpaca", 48), ("tulu", 96)):
        assert not [r for r in standin(name, n, seed=42) if index.overlaps(conversation_text(r))], name


def _exact_overlaps(eval_texts: list[str], text: str, n: int = 13, min_words: int = 8) -> bool:
    """Reference: the n-grams as tuples of words in a Python set (what the hashed index stands for)."""
    import re

    def words(t):
        return re.findall(r"\w+", t.lower())

    grams = set()
    for t in eval_texts:
        w = words(t)
        if len(w) >= min_words:
            size = min(n, len(w))
            grams.update(tuple(w[i:i + size]) for i in range(len(w) - size + 1))
    w = words(text)
    return any(tuple(w[i:i + k]) in grams for k in {len(g) for g in grams} for i in range(len(w) - k + 1))


def test_hashed_ngram_index_decides_as_the_exact_ngram_sets_do():
    """Issue 16.9: training texts that embed slices of 4–20 words of evaluation texts (5–40 words, a 12-word
    vocabulary) in random words: the hashed index drops exactly the conversations the exact tuple sets drop —
    slices shorter than the n-gram kept, longer ones dropped, whole short texts dropped."""
    import random

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(12)]
    eval_texts = [" ".join(rng.choices(vocab, k=rng.randint(5, 40))) for _ in range(60)]
    index = NgramIndex.from_rows({"question": t, "group": "x"} for t in eval_texts)
    decisions, texts = [], []
    for _ in range(400):
        source = rng.choice(eval_texts).split()
        start, length = rng.randrange(len(source)), rng.randint(4, 20)
        text = " ".join([*rng.choices(vocab, k=rng.randint(0, 10)), *source[start:start + length],
                         *rng.choices(vocab, k=rng.randint(0, 10))])
        texts.append(text)
        decisions.append(_exact_overlaps(eval_texts, text))
        assert index.overlaps(text) == decisions[-1], text
    assert 50 < sum(decisions) < 350  # both outcomes well represented
    # checked together (words concatenated): windows across two texts do not count
    assert index.overlapping(texts).tolist() == decisions
    halves = [t for text in texts for t in (" ".join(text.split()[:7]), " ".join(text.split()[7:]))]
    assert index.overlapping(halves).tolist() == [_exact_overlaps(eval_texts, t) for t in halves]


def test_paper_formats_and_a_malformed_line(tmp_path):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Add.", "input": "2 3", "output": "5"}]))
    assert rows_for("alpaca", {"source": "file", "path": str(alpaca)}, 0)[0]["messages"] == [
        {"role": "user", "content": "Add.\n\n2 3"}, {"role": "assistant", "content": "5"}]
    tulu = tmp_path / "tulu.jsonl"
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    tulu.write_text(json.dumps(good) + "\n" + '{"messages": [{"role": "user"\n')
    with pytest.raises(TrainDataError, match=r"tulu\.jsonl:2: not valid JSON"):
        rows_for("tulu", {"source": "file", "path": str(tulu)}, 0)
    assert main(["prepare-train", "--dataset", "tulu", "--source", "file", "--set", f"path={tulu}",
                 "--out", str(tmp_path / "out.jsonl")]) == 2
    assert not (tmp_path / "out.jsonl").exists()


def test_hub_dataset_not_cached_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TrainDataError, match=r"not available offline.*hf download"):
        rows_for("tulu", {"source": "hub", "id": "allenai/tulu-v2-sft-mixture"}, 0)


@pytest.mark.parametrize("layout", ["messages", "prompt-completion"])
def test_a_cached_hub_dataset_in_its_published_layout_is_read(tmp_path, layout):
    """Issue 16.18: a dataset repository as `hf download --repo-type dataset` lays it out (data/train-*.parquet):
    allenai/tulu-v2-sft-mixture's columns dataset, id, messages; or prompt/completion, the other layout the authors'
    finetune.py reads (ostapeno/tulu_v2_flan_v2_subset, the Flan v2 snapshot their README points to)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    chat = [{"role": "user", "content": "Translate 'chat' to English."}, {"role": "assistant", "content": "cat"}]
    if layout == "messages":
        table = pa.table({"dataset": ["flan_v2"], "id": ["flan_v2_0"], "messages": [chat]})
    else:
        table = pa.table({"prompt": [chat[0]["content"]], "completion": [chat[1]["content"]]})
    (tmp_path / "repo" / "data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "repo" / "data" / "train-00000-of-00001.parquet")
    rows = rows_for("flan", {"source": "hub", "id": str(tmp_path / "repo")}, 0)
    assert [r["messages"] for r in rows] == [chat]


def test_a_standin_is_the_same_whatever_the_calling_process_hashes_strings_with():
    """reasoning-gym's isomorphic_strings follows set order, i.e. PYTHONHASHSEED: called from processes that hash
    differently, ``standin`` gives the same conversations (it builds them under PYTHONHASHSEED=0)."""
    import os
    import subprocess
    import sys

    def build(hash_seed: str, code: str) -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": hash_seed}).stdout

    raw = ("import json, reasoning_gym; ds = reasoning_gym.create_dataset('isomorphic_strings', size=12, seed=3); "
           "print(json.dumps([ds[i]['question'] for i in range(12)]))")
    if build("1", raw) == build("2", raw):
        pytest.skip("this reasoning-gym's isomorphic_strings no longer depends on the hash seed")
    ours = "import json; from spiel.instruct import standin; print(json.dumps(standin('flan', 40, 3)))"
    first = build("1", ours)
    assert first == build("2", ours)
    assert any("isomorphic_strings" in row["source"] for row in json.loads(first))
