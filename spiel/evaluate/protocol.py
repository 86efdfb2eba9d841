"""The evaluation protocol of each benchmark (App. B of the paper; open-instruct's settings).

Every number that the paper fixes — shots, sample counts, seeds, token limits, n, temperature — is a
field here. ``PAPER`` holds the paper's values; a config overrides any of them by name, and an unknown
name is an error that says which key and which names exist.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..options import OptionError, checked, field_types

BENCHMARKS = ("mmlu", "gsm", "bbh", "tydiqa", "humaneval")


@dataclass(frozen=True)
class Protocol:
    """How one benchmark is run and scored."""

    benchmark: str
    shots: int = 0
    """In-context exemplars per prompt (MMLU 5, GSM 8, BBH 3, TyDiQA 1)."""
    max_items: int | None = None
    """Items drawn per group with ``seed`` (GSM: in all; BBH: per task; TyDiQA: per language); None = all."""
    split: str = "test"
    """Which prepared items are scored: "test", or "dev" (MMLU dev is the hyperparameter-search metric)."""
    seed: int = 42
    max_new_tokens: int = 512
    n_samples: int = 1
    """Completions per prompt (HumanEval: n = 20 for the unbiased pass@1)."""
    temperature: float = 0.0
    """0 = greedy decoding."""
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    stop_after_text: bool = False
    """Nothing ends a completion before its first non-blank character: a stop sequence counts only after it, and
    the end-of-sequence token is held back until then (small models that open with a newline or end at once;
    ``spiel.evaluate.stops``). Off in the paper's protocol."""
    max_context_tokens: int | None = None
    """TyDiQA: passages are cut to this many tokens (of the evaluated model's tokenizer)."""
    timeout_s: float = 10.0
    """HumanEval: wall-clock limit of one sandboxed program."""
    memory_mb: int = 1024
    """HumanEval: address-space limit of one sandboxed program."""
    confirm_run_unsafe_code: bool = False
    """HumanEval: run generated code even where OS-level isolation (bubblewrap) cannot be set up (lm-eval's
    name for the opt-in); off, such a run stops with what to install."""
    batch_size: int = 8
    prefix_cache: bool = False
    """Log-likelihood requests one at a time in token order, each reusing the keys and values of the prefix it
    shares with the one before (a subject's exemplars, a question's choices; ``spiel.evaluate.lm``) instead of
    padded batches of ``batch_size``; generations one group at a time, each batch from its prompts' cached common
    prefix, and under greedy ``stop_after_text`` a row leaves its batch when it stops. The same scores and greedy
    completions to float rounding (fp32: identical, tested), for fewer tokens run."""
    draft_tokens: int = 0
    """With ``prefix_cache``, greedy ``stop_after_text`` decoding also runs, at each step, up to this many tokens
    drafted by prompt lookup, shared by the batch's running rows (⌊draft_tokens / rows⌋ each: the tokens that
    followed the latest earlier occurrence of the row's last few), and keeps those that greedy decoding chooses:
    the same completions in fewer steps. 0 = off."""
    groups: tuple[str, ...] = field(default=())
    """Restrict to these subjects / tasks / languages (empty = all that the data holds)."""

    def generation_kwargs(self) -> dict[str, Any]:
        """lm-eval ``generation_kwargs`` for this protocol (greedy unless a temperature is set)."""
        kwargs: dict[str, Any] = {"until": list(self.stop), "max_gen_toks": self.max_new_tokens}
        if self.stop_after_text:  # lm-eval's own stops would end a completion at its leading newline
            kwargs.update(until=[], stop_after_text=list(self.stop))
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            kwargs.update(do_sample=False)
        return kwargs

    def settings(self) -> dict[str, Any]:
        """The protocol as plain JSON values, for the result file."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


PAPER: dict[str, Protocol] = {
    "mmlu": Protocol("mmlu", shots=5, max_new_tokens=1),
    "gsm": Protocol("gsm", shots=8, max_items=200, max_new_tokens=512, stop=("\n",)),
    "bbh": Protocol("bbh", shots=3, max_items=40, max_new_tokens=512, stop=("\n\n",)),
    "tydiqa": Protocol("tydiqa", shots=1, max_items=100, max_new_tokens=50, stop=("\n",), max_context_tokens=512),
    "humaneval": Protocol("humaneval", shots=0, n_samples=20, temperature=0.1, top_p=0.95, max_new_tokens=512,
                          stop=("\nclass", "\ndef", "\n#", "\nif", "\nprint")),
}


MINIMUM = {"shots": 0, "max_items": 1, "max_new_tokens": 1, "n_samples": 1, "temperature": 0, "max_context_tokens": 1,
           "memory_mb": 64, "batch_size": 1, "draft_tokens": 0}
"""The least value of a protocol's counts, sizes and temperature (as in the config schema); a smaller one is an
error naming the key."""
ABOVE = {"top_p": 0, "timeout_s": 0}
"""Bounds a protocol number must exceed (the schema's exclusive minimums)."""
MAXIMUM = {"top_p": 1}
"""The greatest value of a protocol number (the schema's maximums)."""


def protocol(benchmark: str, overrides: dict[str, Any] | None = None, where: str = "evaluation") -> Protocol:
    """The paper's protocol for ``benchmark`` with ``overrides`` applied (config key path in errors)."""
    if benchmark not in PAPER:
        raise ValueError(f"{where}: unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    types = {k: v for k, v in field_types(Protocol).items() if k != "benchmark"}
    values = checked(dict(overrides or {}), types, f"{where}.{benchmark}")
    for key, value in values.items():
        if value is None:
            continue
        bound = (f"at least {MINIMUM[key]}" if key in MINIMUM and value < MINIMUM[key] else
                 f"more than {ABOVE[key]}" if key in ABOVE and value <= ABOVE[key] else
                 f"at most {MAXIMUM[key]}" if key in MAXIMUM and value > MAXIMUM[key] else None)
        if bound:
            raise OptionError(f"{where}.{benchmark} {key}={value!r}: expected {bound}")
    return dataclasses.replace(PAPER[benchmark], **values)
