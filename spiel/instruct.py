"""The three instruction-tuning datasets (§4.1): the paper's files, or offline stand-ins with the same roles.

Paper config: Flan v2 (50K subsample), GPT4-Alpaca and the Tülu v2 mixture, read from local files — JSONL of
``{"messages": [...]}`` (open-instruct's processed form) or Alpaca JSON (``instruction``/``input``/``output``)
— or from a hub id already in the local Hugging Face cache. Nothing is downloaded at run time.

Embedded default (sources and licences in config/README.md), never from BIG-bench (its canary forbids training):
- ``flan``: a Flan-like multi-task mix — one templated instruction task per reasoning-gym procedural family;
- ``alpaca``: an Alpaca-like general and code set — CodeI/O problems with their reference solutions (shipped
  in reasoning-gym) and explanations of Python language topics (the reference manual text in ``pydoc_data``);
- ``tulu``: a larger Tülu-like mixture of both, a quarter of it as two-turn conversations.

Every training set is decontaminated against the evaluation data: an example sharing a word 13-gram (or a whole
shorter question) with any evaluation item or exemplar is dropped, and the count is reported.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from .data import TrainDataError, read_conversations

Conversation = dict[str, Any]

FLAN_FAMILIES = (
    "letter_counting", "spell_backward", "basic_arithmetic", "gcd", "lcm", "caesar_cipher", "base_conversion",
    "syllogism", "word_sequence_reversal", "number_filtering", "prime_factorization", "fraction_simplification",
    "count_bits", "isomorphic_strings", "ransom_note", "sentence_reordering", "letter_jumble", "group_anagrams",
)
"""reasoning-gym families used as Flan-like tasks. Left out: ``word_sorting`` and ``leg_counting`` (the BBH
tasks word_sorting / object_counting are evaluated), ``gsm_symbolic`` (the GSM stand-in) and code I/O."""

STANDINS = ("flan", "alpaca", "tulu")
DEFAULT_STANDIN = 64
"""Conversations of a stand-in when ``train_data.<name>.n`` is not given."""


def _chat(user: str, assistant: str, source: str) -> Conversation:
    return {"messages": [{"role": "user", "content": user.strip()},
                         {"role": "assistant", "content": assistant.strip()}], "source": source}


def flan_like(n: int, seed: int) -> list[Conversation]:
    """``n`` examples drawn round-robin over ``FLAN_FAMILIES`` (seeded reasoning-gym generators)."""
    import reasoning_gym

    per_family = -(-n // len(FLAN_FAMILIES))
    pools = [(name, reasoning_gym.create_dataset(name, size=per_family, seed=seed + i))
             for i, name in enumerate(FLAN_FAMILIES)]
    rows = [_chat(ds[k]["question"], str(ds[k]["answer"]), f"reasoning-gym:{name}")
            for k in range(per_family) for name, ds in pools]
    return rows[:n]


def _codeio() -> list[dict[str, Any]]:
    path = resources.files("reasoning_gym") / "data" / "codeio.jsonl.gz"
    with gzip.open(str(path), "rt") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def alpaca_like(n: int, seed: int, max_prompt: int = 400, max_code: int = 1200) -> list[Conversation]:
    """``n`` examples, alternating a CodeI/O coding task and a Python-topic explanation, seeded. Only tasks
    whose description fits ``max_prompt`` characters are used, so that short training sequences still reach
    the solution."""
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    code = [r for r in _codeio() if len(r["task_description"]) + len(r["input_output_spec"]) <= max_prompt
            and len(r["code_sample"]) <= max_code and r["task_description"].isascii()]
    rng.shuffle(code)
    names = sorted(topics)
    rng.shuffle(names)
    rows = []
    for i in range(n):
        if i % 2 == 0 and code:
            task = code.pop()
            rows.append(_chat(f"{task['task_description']}\n\n{task['input_output_spec']}\n\nWrite a Python "
                              f"function `main_solution` that solves this.", task["code_sample"], "codeio"))
        else:
            name = names[(i // 2) % len(names)]
            words = list(re.finditer(r"\S+", topics[name]))
            text = topics[name][:words[min(159, len(words) - 1)].end()]
            rows.append(_chat(f"Explain the Python language topic '{name}' as the reference manual does.",
                              text, f"pydoc_data:{name}"))
    return rows


def tulu_like(n: int, seed: int) -> list[Conversation]:
    """A mixture of Flan-like and Alpaca-like examples (other seeds), a quarter merged into two-turn chats."""
    pool = flan_like(n // 2 + n // 4, seed + 1000) + alpaca_like(n - n // 2 + n // 4, seed + 2000)
    random.Random(seed).shuffle(pool)
    pairs, singles = pool[: n // 2], pool[n // 2:]
    rows = [{"messages": a["messages"] + b["messages"], "source": f"{a['source']}+{b['source']}"}
            for a, b in zip(pairs[0::2], pairs[1::2], strict=False)]
    rows += singles
    random.Random(seed + 1).shuffle(rows)
    return rows[:n]


def standin(name: str, n: int, seed: int) -> list[Conversation]:
    """The stand-in ``name``: ``n`` conversations drawn with ``seed``, the same in every process. Some reasoning-gym
    generators follow set order (``isomorphic_strings``), which Python's string hashing decides per process, so
    the Flan and Tülu stand-ins are built without hash randomisation (``PYTHONHASHSEED=0``): here when this
    interpreter hashes so, else in a child process that does."""
    builders = {"flan": flan_like, "alpaca": alpaca_like, "tulu": tulu_like}
    if name not in builders:
        raise TrainDataError(f"train_data.{name}: no offline stand-in (choose one of {STANDINS})")
    if name == "alpaca" or sys.flags.hash_randomization == 0:
        return builders[name](n, seed)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "standin.json"
        code = "import json, sys; from spiel.instruct import standin; " \
               "open(sys.argv[1], 'w').write(json.dumps(standin(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))"
        child = subprocess.run([sys.executable, "-c", code, str(out), name, str(n), str(seed)], capture_output=True,
                               text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        if child.returncode != 0:
            raise TrainDataError(f"train_data.{name}: building the stand-in failed:\n{child.stderr[-2000:]}")
        return json.loads(out.read_text())


def from_alpaca_json(path: Path) -> list[Conversation]:
    """GPT4-Alpaca's JSON list of ``{instruction, input, output}`` as conversations."""
    try:
        items = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TrainDataError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    rows = []
    for k, item in enumerate(items):
        if not isinstance(item, dict) or not {"instruction", "output"} <= set(item):
            raise TrainDataError(f"{path}: item {k} needs 'instruction' and 'output'")
        prompt = item["instruction"] + (f"\n\n{item['input']}" if item.get("input") else "")
        rows.append(_chat(prompt, item["output"], str(path)))
    return rows


def from_file(path: Path) -> list[Conversation]:
    """A local training file: JSONL of conversations, or Alpaca-format JSON."""
    if not path.exists():
        raise TrainDataError(f"{path}: training file does not exist (download it and set train_data.*.path)")
    if path.suffix == ".json":
        return from_alpaca_json(path)
    return [{"messages": messages, "source": f"{path}:{line}"} for line, messages in read_conversations(path)]


def from_hub(dataset_id: str, split: str = "train") -> list[Conversation]:
    """A hub dataset that is already in the local cache (offline); otherwise a message saying what to do."""
    import datasets

    try:
        table = datasets.load_dataset(dataset_id, split=split)
    except Exception as error:  # datasets raises many types when offline
        raise TrainDataError(f"train data {dataset_id!r} is not available offline ({type(error).__name__}). "
                             f"Download it on a connected machine (`hf download {dataset_id} --repo-type dataset`) "
                             f"or set train_data.*.path to a local JSONL/JSON file.") from None
    columns = set(table.column_names)
    if "messages" in columns:
        return [{"messages": row["messages"], "source": dataset_id} for row in table]
    if {"prompt", "completion"} <= columns:
        # the other layout the authors' finetune.py accepts; it joins the two as plain text, here they become one
        # user/assistant exchange in the Tülu format (loss on the completion either way)
        return [_chat(row["prompt"], row["completion"], dataset_id) for row in table]
    raise TrainDataError(f"{dataset_id}: expected a 'messages' column or 'prompt' and 'completion', found "
                         f"{table.column_names}")


def rows_for(name: str, spec: dict[str, Any], seed: int) -> list[Conversation]:
    """The conversations ``train_data.<name>`` names: ``source`` standin | file (``path``) | hub (``id``)."""
    source = spec.get("source", "standin")
    if source == "standin":
        return standin(name, int(spec.get("n", DEFAULT_STANDIN)), seed)
    if source == "file":
        if not spec.get("path"):
            raise TrainDataError(f"train_data.{name}.path: required for source 'file'")
        rows = from_file(Path(spec["path"]))
    elif source == "hub":
        rows = from_hub(spec["id"], spec.get("split", "train"))
    else:
        raise TrainDataError(f"train_data.{name}.source: {source!r} is not one of standin, file, hub")
    limit = spec.get("n")
    if limit:
        rows = random.Random(seed).sample(rows, min(int(limit), len(rows)))
    return rows
