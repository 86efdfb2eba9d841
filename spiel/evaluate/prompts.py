"""Prompts and per-item scores of the paper's evaluation (App. B; open-instruct's formats, no chat template).

``build_docs`` turns the prepared rows of a benchmark into the items lm-eval runs: it picks the items of the
protocol's split, draws ``max_items`` per group with the protocol's seed, and writes each item's full prompt
(header, exemplars, question). ``score`` turns one item's outputs into its score and extracted answer.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..jsonl import read_jsonl
from .metrics import bbh_extract, bbh_match, gsm_extract, gsm_match, max_f1, pass_at_k
from .protocol import Protocol
from .sandbox import humaneval_program, run_program
from .sources import DataError

Row = dict[str, Any]
Truncate = Callable[[str, int], str]

TYDIQA_INSTRUCTION = "Answer the following question based on the information in the given passage."


def _mmlu_block(row: Row, with_answer: bool) -> str:
    options = "".join(f"\n{letter}. {text}" for letter, text in zip("ABCD", row["choices"], strict=True))
    return f"{row['question'].strip()}{options}\nAnswer:" + (f" {row['answer']}\n\n" if with_answer else "")


def mmlu(row: Row, shots: list[Row], proto: Protocol, truncate: Truncate) -> Row:
    header = f"The following are multiple choice questions (with answers) about {row['group'].replace('_', ' ')}.\n\n"
    pool = [s for s in shots if s["question"] != row["question"]][: proto.shots]
    prompt = header + "".join(_mmlu_block(s, True) for s in pool) + _mmlu_block(row, False)
    return {"prompt": prompt, "target": "ABCD".index(row["answer"])}


def gsm(row: Row, shots: list[Row], proto: Protocol, truncate: Truncate) -> Row:
    demos = "\n\n".join(f"Question: {s['question']}\nAnswer: {s['cot_answer']}" for s in shots[: proto.shots])
    prompt = "Answer the following questions.\n" + (demos + "\n\n" if demos else "")
    return {"prompt": prompt + f"Question: {row['question'].strip()}\nAnswer:", "target": row["answer"]}


def bbh(row: Row, shots: list[Row], proto: Protocol, truncate: Truncate) -> Row:
    used = shots[: proto.shots]
    demos = "".join(f"Q: {s['input']}\nA: Let's think step by step.\n{s['target']}\n\n" for s in used)
    description = shots[0]["description"] + "\n\n" if shots else ""
    return {"prompt": f"{description}{demos}Q: {row['input']}\nA:", "target": row["target"]}


def _passage(row: Row, proto: Protocol, truncate: Truncate, answer: bool) -> str:
    context = truncate(row["context"], proto.max_context_tokens) if proto.max_context_tokens else row["context"]
    tail = f" {row['answers'][0]}" if answer else ""
    return f"Passage: {context}\nQuestion: {row['question']}\nAnswer:{tail}"


def tydiqa(row: Row, shots: list[Row], proto: Protocol, truncate: Truncate) -> Row:
    demos = "".join(_passage(s, proto, truncate, True) + "\n\n" for s in shots[: proto.shots])
    prompt = f"{TYDIQA_INSTRUCTION}\n\n{demos}{_passage(row, proto, truncate, False)}"
    return {"prompt": prompt, "target": json.dumps(row["answers"])}


def humaneval(row: Row, shots: list[Row], proto: Protocol, truncate: Truncate) -> Row:
    return {"prompt": row["prompt"], "target": row["task_id"]}


BUILDERS = {"mmlu": mmlu, "gsm": gsm, "bbh": bbh, "tydiqa": tydiqa, "humaneval": humaneval}
SPLITS = ("shot", "test", "dev")
FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "mmlu": {"shot": ("question", "choices", "answer"), "item": ("question", "choices", "answer")},
    "gsm": {"shot": ("question", "cot_answer"), "item": ("question", "answer")},
    "bbh": {"shot": ("input", "target", "description"), "item": ("input", "target")},
    "tydiqa": {"shot": ("context", "question", "answers"), "item": ("context", "question", "answers")},
    "humaneval": {"shot": (), "item": ("prompt", "test", "entry_point", "task_id")},
}
"""The fields each prepared row needs, by benchmark and role (an exemplar or an evaluated item)."""


def read_rows(path: Path, benchmark: str) -> list[Row]:
    """The prepared rows of ``benchmark`` in ``path``; a row without what its prompt needs names file and line."""
    rows = []
    for line, row in read_jsonl(path):
        where = f"{path}:{line}"
        if not isinstance(row, dict) or row.get("split") not in SPLITS or not isinstance(row.get("group"), str):
            raise DataError(f"{where}: expected a {benchmark} row with a 'group' and a 'split' in {SPLITS}")
        missing = [f for f in FIELDS[benchmark]["shot" if row["split"] == "shot" else "item"] if row.get(f) is None]
        if missing:
            raise DataError(f"{where}: a {benchmark} {row['split']} row needs {missing} (prepare-eval writes them)")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows (run `python -m spiel prepare-eval --benchmark {benchmark}`)")
    return rows


def select(rows: list[Row], proto: Protocol) -> tuple[list[Row], dict[str, list[Row]]]:
    """The evaluated items (the protocol's split; ``max_items`` per group drawn with its seed) and the shots
    per group, those that are not items of the split first: where a group's shots are also its items (the
    offline MMLU's five questions per subject), every item of a split sees the same exemplars, as with the
    paper's fixed dev exemplars, and never another item of its split. GSM draws ``max_items`` in all (it has one
    group)."""
    unknown = sorted(set(proto.groups) - {row["group"] for row in rows})
    if unknown:
        present = sorted({row["group"] for row in rows})
        raise ValueError(f"{proto.benchmark}.groups: {unknown} not in the data, which holds {len(present)} groups "
                         f"({', '.join(present[:6])}{', …' if len(present) > 6 else ''})")
    shots: dict[str, list[Row]] = defaultdict(list)
    items: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if proto.groups and row["group"] not in proto.groups:
            continue
        if row["split"] == "shot":
            shots[row["group"]].append(row)
        elif row["split"] == proto.split:
            items[row["group"]].append(row)
    for group, pool in shots.items():  # exemplars that are not items of this split first, in their order
        asked = {_asked(row) for row in items[group]}
        pool.sort(key=lambda shot: _asked(shot) in asked)
    chosen: list[Row] = []
    for group in sorted(items):
        members = items[group]
        if proto.max_items is not None and len(members) > proto.max_items:
            picked = sorted(random.Random(proto.seed).sample(range(len(members)), proto.max_items))
            members = [members[i] for i in picked]
        chosen += members
    return chosen, shots


def _asked(row: Row) -> str | None:
    """What a row asks (its question, or BBH's input): a shot that asks what an item asks is that item."""
    return row.get("question", row.get("input"))


def build_docs(rows: list[Row], proto: Protocol, truncate: Truncate) -> list[Row]:
    """Items with their full prompt and target (plus ``group`` and the original fields for the log)."""
    items, shots = select(rows, proto)
    build = BUILDERS[proto.benchmark]
    return [{**row, **build(row, shots[row["group"]], proto, truncate)} for row in items]


def score(doc: Row, outputs: list[str], proto: Protocol) -> tuple[float, Any]:
    """(score in [0, 1], extracted answer) of one generated item."""
    name = proto.benchmark
    if name == "gsm":
        return float(gsm_match(outputs[0], doc["answer"])), gsm_extract(outputs[0])
    if name == "bbh":
        return float(bbh_match(outputs[0], doc["target"])), bbh_extract(outputs[0])
    if name == "tydiqa":
        answer = outputs[0].strip()
        return max_f1(answer, doc["answers"]), answer
    if name == "humaneval":
        programs = [humaneval_program(doc, completion) for completion in outputs]
        def run(program: str):
            return run_program(program, proto.timeout_s, proto.memory_mb, proto.confirm_run_unsafe_code)

        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = list(pool.map(run, programs))
        passed = sum(o.passed for o in outcomes)
        return pass_at_k(len(outcomes), passed, 1), [o.status for o in outcomes]
    raise ValueError(f"{name} is scored by log-likelihood, not by generated text")
