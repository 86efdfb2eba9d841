"""Stops after the answer has begun (protocol ``stop_after_text``, for small models).

A small instruction model often opens a completion with a newline, or ends it at once with its end-of-sequence
token (SmolLM2-135M-Instruct does so on every few-shot GSM prompt of the default run); the paper's protocols stop
GSM and TyDiQA at ``"\\n"`` (and HumanEval at ``"\\ndef"`` and the like), so such a completion ends before its
first word and scores as empty. With ``stop_after_text`` nothing ends a completion before it holds a non-blank
character: a stop sequence is matched only after the leading whitespace (which is kept), and the end-of-sequence
token is held back until then. Off (the paper's behaviour), the stops are lm-eval's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, StoppingCriteria


def truncate(text: str, stops: Sequence[str], after_text: bool) -> str:
    """``text`` up to its first stop sequence, searched after the leading whitespace if ``after_text``."""
    start = len(text) - len(text.lstrip()) if after_text else 0
    cuts = [i for stop in stops if stop and (i := text.find(stop, start)) >= 0]
    return text[:min(cuts)] if cuts else text


class StopAfterText(StoppingCriteria):
    """Stop a batch row once its generated text (after ``prompt_length`` tokens) holds a stop sequence past its
    leading whitespace."""

    def __init__(self, tokenizer, stops: Sequence[str], prompt_length: int):
        self.tokenizer, self.stops, self.prompt_length = tokenizer, list(stops), prompt_length

    def stopped(self, completions: Sequence[Sequence[int]]) -> list[bool]:
        """Whether each completion (its tokens) holds a stop sequence past its leading whitespace."""
        return [truncate(t, self.stops, True) != t for t in self.tokenizer.batch_decode(completions)]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.tensor(self.stopped(input_ids[:, self.prompt_length:].tolist()), device=input_ids.device)


class NoEndBeforeText(LogitsProcessor):
    """Forbid the end-of-sequence tokens ``end_ids`` in a batch row until its generated text (after
    ``prompt_length`` tokens) holds a non-blank character."""

    def __init__(self, tokenizer, end_ids: Sequence[int], prompt_length: int):
        self.tokenizer, self.end_ids, self.prompt_length = tokenizer, list(end_ids), prompt_length

    def hold_back(self, completions: Sequence[Sequence[int]], scores: torch.FloatTensor) -> torch.FloatTensor:
        """``scores`` (one row per completion, its tokens so far) with the end tokens at -inf where it is blank."""
        blank = [not text.strip() for text in self.tokenizer.batch_decode(completions, skip_special_tokens=True)]
        if any(blank):
            scores[torch.tensor(blank, device=scores.device).nonzero()[:, :1], torch.tensor(self.end_ids)] = -torch.inf
        return scores

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.hold_back(input_ids[:, self.prompt_length:].tolist(), scores)
