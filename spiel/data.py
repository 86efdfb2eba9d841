"""Instruction-tuning data in the Tülu chat format, with the loss on assistant tokens only (App. B).

A conversation is ``<|user|>\\n…\\n<|assistant|>\\n…</s>\\n`` per turn (``<|system|>`` likewise). Every
token outside an assistant reply — the ``<|assistant|>\\n`` tag included — is masked from the loss with
label −100; sequences are truncated to the maximum length, and examples left without a labelled token
are dropped (as the authors' code does).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .jsonl import JsonlError, read_jsonl

IGNORE = -100
ROLES = ("system", "user", "assistant")


class TrainDataError(ValueError):
    """A malformed training file; the message names the file and line."""


def read_conversations(path: Path) -> Iterator[tuple[int, list[dict[str, str]]]]:
    """(line, messages) from a JSONL of ``{"messages": [{"role", "content"}, …]}`` rows."""
    try:
        for line, row in read_jsonl(path, "training file"):
            yield line, _messages(path, line, row)
    except JsonlError as error:
        raise TrainDataError(str(error)) from None


def check_file(path: Path) -> None:
    """Fail fast, before a model loads: the file exists, is text, and its first row is a conversation."""
    next(read_conversations(path), None)


def _messages(path: Path, line: int, row: Any) -> list[dict[str, str]]:
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages or any(
            not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str)
            for m in messages):
        raise TrainDataError(f"{path}:{line}: expected a JSON object with a 'messages' list, every message with a "
                             f"role in {ROLES} and text content")
    return messages


def segments(messages: list[dict[str, str]], eos: str) -> list[tuple[str, bool]]:
    """(text, trained) pieces of one conversation in the Tülu format."""
    pieces: list[tuple[str, bool]] = []
    for message in messages:
        if message["role"] == "assistant":
            pieces.append((message["content"].strip() + eos + "\n", True))
        else:
            tail = "<|assistant|>\n" if message["role"] == "user" else ""
            pieces.append((f"<|{message['role']}|>\n{message['content'].strip()}\n{tail}", False))
    return pieces


def encode(messages: list[dict[str, str]], tokenizer, max_length: int) -> dict[str, list[int]] | None:
    """input_ids and labels (−100 outside assistant replies), truncated; None if nothing is labelled."""
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in segments(messages, tokenizer.eos_token):
        tokens = tokenizer.encode(text, add_special_tokens=False)
        ids += tokens
        labels += tokens if trained else [IGNORE] * len(tokens)
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def load(path: Path, tokenizer, max_length: int) -> list[dict[str, list[int]]]:
    """Every encodable conversation of a training file."""
    encoded = (encode(m, tokenizer, max_length) for _, m in read_conversations(path))
    return [e for e in encoded if e is not None]


def batches(examples: list[dict[str, list[int]]], size: int, seed: int, epoch: int,
            pad_id: int) -> list[dict[str, Any]]:
    """The epoch's micro-batches: order shuffled by (seed, epoch), right-padded, masks and labels set."""
    order = list(range(len(examples)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    out = []
    for start in range(0, len(order), size):
        chunk = [examples[i] for i in order[start:start + size]]
        width = max(len(e["input_ids"]) for e in chunk)
        ids = torch.full((len(chunk), width), pad_id)
        labels = torch.full((len(chunk), width), IGNORE)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, example in enumerate(chunk):
            n = len(example["input_ids"])
            ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            mask[row, :n] = 1
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out
