"""Stop sequences after the answer has begun (protocol ``stop_after_text``, for small models).

A small instruction model often opens a completion with a newline; the paper's protocols stop GSM and TyDiQA at
``"\\n"`` (and HumanEval at ``"\\ndef"`` and the like), so such a completion ends before its first word and
scores as empty. With ``stop_after_text`` a stop sequence counts only once the completion holds a non-blank
character: its leading whitespace is kept, never matched. Off (the paper's behaviour), the stops are lm-eval's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import StoppingCriteria


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

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:])
        return torch.tensor([truncate(t, self.stops, True) != t for t in texts], device=input_ids.device)
