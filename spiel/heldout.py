"""Held-out loss: each training set's held-out conversations scored by a trained cell (issue 20's extension table).

At the laptop default's scale the benchmarks barely move, but the loss on conversations like those a cell was
trained on does. A held-out conversation is scored as training scores it (``spiel.data.encode``: the chat format,
loss on the assistant replies only, the same truncation): its mean cross-entropy per target token, in nats. The
result file has the layout of an evaluation file — ``value`` (mean over conversations), ``stderr``, one sample
per conversation with its score — so the tables and the audit read it as they read a benchmark (lower is better).
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import torch

from . import data
from .data import read_conversations
from .provenance import package_versions


def split(rows: list[dict], heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows): ``heldout`` rows drawn with ``seed``; a held-out conversation whose messages
    also occur among the training rows is dropped, so the two are disjoint."""
    if heldout < 0 or heldout >= len(rows):
        raise ValueError(f"heldout={heldout}: needs 0 ≤ heldout < {len(rows)} conversations")
    chosen = set(random.Random(seed).sample(range(len(rows)), heldout))
    train = [row for i, row in enumerate(rows) if i not in chosen]
    seen = {_key(row) for row in train}
    return train, [row for i, row in enumerate(rows) if i in chosen and _key(row) not in seen]


def _key(row: dict) -> str:
    return "\x1e".join(f"{m['role']}\x1f{m['content'].strip()}" for m in row["messages"])


@torch.no_grad()
def score(model: torch.nn.Module, tokenizer, path: Path, max_length: int) -> dict[str, Any]:
    """Mean per-token loss of every held-out conversation in ``path`` (a conversations JSONL), with its standard
    error over conversations and one sample per conversation."""
    from .train import target_loss

    rows = [(line, messages) for line, messages in read_conversations(path)]
    encoded = [(line, messages, data.encode(messages, tokenizer, max_length)) for line, messages in rows]
    encoded = [(line, messages, e) for line, messages, e in encoded if e is not None]
    if not encoded:
        raise ValueError(f"{path}: no held-out conversation with an assistant reply within {max_length} tokens")
    device = next(model.parameters()).device
    samples = []
    for line, messages, example in encoded:  # one at a time: no padding, each conversation's own loss
        batch = {"input_ids": torch.tensor([example["input_ids"]], device=device),
                 "attention_mask": torch.ones(1, len(example["input_ids"]), dtype=torch.long, device=device),
                 "labels": torch.tensor([example["labels"]], device=device)}
        tokens = sum(label != data.IGNORE for label in example["labels"][1:])
        loss = float(target_loss(model, batch)) / tokens
        samples.append({"doc_id": line, "group": "heldout", "prompt": messages[0]["content"], "tokens": tokens,
                        "score": loss})
    losses = [s["score"] for s in samples]
    mean = sum(losses) / len(losses)
    spread = math.sqrt(sum((x - mean) ** 2 for x in losses) / (len(losses) - 1) / len(losses)) if len(losses) > 1 \
        else 0.0
    return {"benchmark": "heldout", "metric": "loss (nats per target token)", "value": mean, "stderr": spread,
            "n_items": len(samples), "data_file": str(path), "max_length": max_length,
            "versions": package_versions(), "samples": samples}
