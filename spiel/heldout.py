"""Held-out loss and exact match: each training set's held-out conversations scored by a trained cell (issue 20's
extension table).

At the laptop default's scale the benchmarks barely move, but the loss on conversations like those a cell was
trained on does. A held-out conversation is scored as training scores it (``spiel.data.encode``: the chat format,
loss on the assistant replies only, the same truncation): its mean cross-entropy per target token, in nats. The
result file has the layout of an evaluation file — ``value`` (mean over conversations), ``stderr``, one sample
per conversation with its score — so the tables and the audit read it as they read a benchmark (lower is better).

Where the stand-in has verifiable answers — a held-out conversation that is one reasoning-gym question and its
answer (the Flan stand-in's tasks, and the Tülu one's single-turn share of them) — the cell also answers the
question, prompted as training prompts it and decoded greedily up to its end-of-sequence token, and scores exact
match against the reference answer (whitespace-normalised; an answer that has not ended within ``ANSWER_MARGIN``
tokens of the reference's length does not match): ``exact_match`` beside the loss, 0/1 per item. Only questions
whose whole conversation fits training's ``max_length`` are asked (training never saw the end of the others).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from . import data
from .data import read_conversations
from .evaluate.run import mean_stderr
from .jsonl import read_jsonl
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


VERIFIABLE = "reasoning-gym:"
"""``source`` prefix of the stand-in conversations whose single answer a generator verifies (``spiel.instruct``)."""
ANSWER_MARGIN = 8
"""Tokens generated past the reference answer's length: an answer still running then cannot match it."""
GENERATION_BATCH = 8


def _key(row: dict) -> str:
    return "\x1e".join(f"{m['role']}\x1f{m['content'].strip()}" for m in row["messages"])


@torch.no_grad()
def score(model: torch.nn.Module, tokenizer, path: Path, max_length: int, answers: bool = True) -> dict[str, Any]:
    """Mean per-token loss of every held-out conversation in ``path`` (a conversations JSONL), with its standard
    error over conversations and one sample per conversation; with ``answers``, where ``path`` has verifiable
    questions that fit ``max_length``, their ``exact_match``."""
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
    mean, spread = mean_stderr([s["score"] for s in samples])
    result = {"benchmark": "heldout", "metric": "loss (nats per target token)", "value": mean, "stderr": spread,
              "n_items": len(samples), "data_file": str(path), "max_length": max_length,
              "versions": package_versions(), "samples": samples}
    questions = [q for q in verifiable(path) if _fits(q, tokenizer, max_length)] if answers else []
    if questions:
        matches = exact_match(model, tokenizer, questions)
        mean, spread = mean_stderr([100.0 * m["exact_match"] for m in matches])
        result["exact_match"] = {"metric": "exact match (%)", "value": mean, "stderr": spread,
                                 "n_items": len(matches), "samples": matches}
    return result


def verifiable(path: Path) -> list[tuple[int, str, str]]:
    """(line, question, reference answer) of every held-out conversation in ``path`` that is one verifiable
    question (``source`` from reasoning-gym, one user turn, one assistant reply)."""
    out = []
    for line, row in read_jsonl(path, "held-out file"):
        messages = row.get("messages", [])
        if str(row.get("source", "")).startswith(VERIFIABLE) and [m.get("role") for m in messages] == \
                ["user", "assistant"]:
            out.append((line, messages[0]["content"], messages[1]["content"]))
    return out


def _fits(question: tuple[int, str, str], tokenizer, max_length: int) -> bool:
    """Whether the question and its answer fit ``max_length`` tokens whole, as training encodes them."""
    _, text, answer = question
    whole = data.encode([{"role": "user", "content": text}, {"role": "assistant", "content": answer}], tokenizer,
                        max_length + 1)
    return whole is not None and len(whole["input_ids"]) <= max_length


def _normalise(text: str) -> str:
    return " ".join(text.split())


@torch.no_grad()
def exact_match(model: torch.nn.Module, tokenizer, questions: list[tuple[int, str, str]]) -> list[dict[str, Any]]:
    """Greedy answers to ``questions`` (line, question, reference), prompted in training's chat format
    (``spiel.data.segments``) and ended by the first end-of-sequence token; one sample per question with its 0/1
    exact match. Plain greedy decoding in left-padded batches, whatever the model's generation config says; a batch
    runs ``ANSWER_MARGIN`` tokens past its longest reference, or until every row has ended."""
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    samples = []
    for start in range(0, len(questions), GENERATION_BATCH):
        batch = questions[start:start + GENERATION_BATCH]
        prompts = [tokenizer.encode(data.segments([{"role": "user", "content": q}], tokenizer.eos_token)[0][0],
                                    add_special_tokens=False) for _, q, _ in batch]
        budget = max(len(tokenizer.encode(r, add_special_tokens=False)) for _, _, r in batch) + ANSWER_MARGIN
        answers = _greedy(model, prompts, budget, eos, pad, device)
        for (line, question, reference), (tokens, ended) in zip(batch, answers, strict=True):
            prediction = tokenizer.decode(tokens, skip_special_tokens=True)
            samples.append({"doc_id": line, "group": "heldout", "prompt": question, "reference": reference,
                            "prediction": prediction, "ended": ended,
                            "exact_match": int(ended and _normalise(prediction) == _normalise(reference))})
    return samples


def _greedy(model: torch.nn.Module, prompts: list[list[int]], budget: int, eos: int, pad: int,
            device: torch.device) -> list[tuple[list[int], bool]]:
    """(tokens before end-of-sequence, whether it came) of each prompt's argmax continuation, ``budget`` tokens
    at most: left-padded, positions counted over each row's own tokens, one key/value cache."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    answers: list[list[int]] = [[] for _ in prompts]
    ended = [False] * len(prompts)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    for step in range(budget):
        tokens = out.logits[:, -1].argmax(-1)
        for row, token in enumerate(tokens.tolist()):
            if not ended[row]:
                ended[row] = token == eos
                answers[row] += [] if ended[row] else [token]
        if all(ended) or step == budget - 1:
            break
        mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions,
                    past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)
    return list(zip(answers, ended, strict=True))
