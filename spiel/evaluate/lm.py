"""The evaluated model as lm-eval sees it: lm-eval's ``HFLM``, with the protocol's ``stop_after_text`` stops and
its ``prefix_cache``: requests that share a prompt prefix (a subject's few-shot exemplars, a question's answer
choices, a task's exemplars before each generated answer) compute that prefix's keys and values once."""

from __future__ import annotations

import contextlib
import copy
import os
from collections import defaultdict
from collections.abc import Iterator

import torch
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm
from transformers import DynamicCache, LogitsProcessorList, StoppingCriteriaList

from .stops import NoEndBeforeText, StopAfterText


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    """The key/value cache of the last sequence run, and its tokens: a sequence that starts like it reuses the
    shared part (cropped to it) and runs only the rest."""

    def __init__(self) -> None:
        self.cache, self.tokens = None, []
        self.last: torch.Tensor | None = None
        """Log-probabilities after the last token run: the next token's distribution, reused by a one-token
        continuation of the same context."""

    def reuse(self, tokens: list[int], recompute: int) -> int:
        """Crop the cache to the longest prefix it shares with ``tokens``, leaving at least the last ``recompute``
        tokens to run; returns how many tokens the cache keeps."""
        keep = min(common_prefix(self.tokens, tokens), len(tokens) - recompute)
        if keep <= 0 or self.cache is None:
            self.cache, self.tokens = None, []
            return 0
        if len(self.tokens) > keep:  # a negative count removes tokens in every transformers version since 4.38
            self.cache.crop(keep - len(self.tokens))
        self.tokens = tokens[:keep]
        return keep


def lookup_draft(tokens: list[int], count: int, longest: int = 3) -> list[int]:
    """Prompt-lookup decoding's draft (Saxena, 2023; ``generate``'s ``prompt_lookup_num_tokens``): the (up to)
    ``count`` tokens that followed the latest earlier occurrence of the sequence's last n tokens, for the largest
    n ≤ ``longest`` that recurs; empty if none does. A few-shot completion copies names, numbers and phrasing from
    its prompt, and a small model's repeats itself."""
    for n in range(min(longest, len(tokens) - 1), 0, -1):
        tail = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start + n - 1] == tail[-1] and tokens[start:start + n] == tail:
                return tokens[start + n:start + n + count]
    return []


def row_drafts(sequences: list[list[int]], pad: int, count: int) -> list[list[int]]:
    """Each row's ``lookup_draft`` of at most ``count`` tokens, padded with ``pad`` to the longest row's (a decoding
    step scores every row at as many positions; where no row has a draft, none)."""
    found = [lookup_draft(tokens, count) if count > 0 else [] for tokens in sequences]
    width = max(map(len, found), default=0)
    return [draft + [pad] * (width - len(draft)) for draft in found]


FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextlib.contextmanager
def grouped_query_attention(on: bool = True) -> Iterator[None]:
    """Within it (if ``on``), transformers' SDPA attention serves each key/value head's query heads in place
    (``enable_gqa``) where it would copy that head once per query head (``repeat_kv``: every step with a mask and
    more than one query, as a prompt's padded remainder or a step with drafts). The same outputs (tested); on this
    CPU 1.8 instead of 6.6 ms a layer for 8 rows × 4 queries over 1,000 cached tokens. Used on CPU only: with a
    mask, CUDA's SDPA would fall back to its math kernel (unmeasured here). transformers'
    ``TRANSFORMERS_SDPA_FORCE_GQA`` switch, read at each call; a version without it is unaffected."""
    before = os.environ.get(FORCE_GQA)
    if on:
        os.environ[FORCE_GQA] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(FORCE_GQA, None)
        else:
            os.environ[FORCE_GQA] = before


MIN_SHARED_TOKENS = 16
"""A generation batch runs on a cached prefix only when its prompts share at least this many tokens (below it the
copies of the cache cost more than the prefix's forward; the batch then runs whole, from an empty cache)."""


def shared_prefix_inputs(context: torch.Tensor, attention_mask: torch.Tensor, pad_id: int,
                         ) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """A left-padded batch rewritten around the prompts' common prefix: (the prefix's tokens, the batch as prefix +
    left-padded remainders, its attention mask). The padding sits between prefix and remainder, where the mask
    hides it and the positions (counted over unmasked tokens) run on as in each unpadded prompt; every row keeps
    at least one token after the prefix, so that generation has a last token to start from."""
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(context, attention_mask, strict=True)]
    shared = min(len(r) for r in rows) - 1
    for row in rows[1:]:
        shared = min(shared, common_prefix(rows[0], row))
    prefix = rows[0][:max(shared, 0)]
    width = max(len(r) for r in rows) - len(prefix)
    ids = torch.full((len(rows), len(prefix) + width), pad_id, dtype=context.dtype)
    mask = torch.zeros_like(ids, dtype=attention_mask.dtype)
    ids[:, :len(prefix)], mask[:, :len(prefix)] = torch.tensor(prefix, dtype=context.dtype), 1
    for b, row in enumerate(rows):
        rest = row[len(prefix):]
        ids[b, ids.shape[1] - len(rest):], mask[b, ids.shape[1] - len(rest):] = torch.tensor(rest), 1
    return prefix, ids.to(context.device), mask.to(context.device)


PLAIN_GREEDY_SETTINGS = {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "do_sample",
                         "temperature", "top_p", "top_k", "max_length", "max_new_tokens", "use_cache",
                         "output_attentions", "output_hidden_states", "transformers_version", "_from_model_config"}
"""Generation-config fields that greedy decoding under ``stop_after_text`` either ignores (sampling) or honours
itself; any other field sends a batch through ``generate``."""


class ProtocolLM(HFLM):
    """``HFLM`` whose generation honours the ``stop_after_text`` generation keyword (the protocol's stop
    sequences, matched only after the completion's leading whitespace, and no end-of-sequence before it:
    ``spiel.evaluate.stops``), and whose log-likelihoods and generations reuse shared prefixes where
    ``prefix_cache`` is set."""

    prefix_cache: bool = False
    """Score log-likelihood requests one at a time in token order, each reusing the previous one's cache for
    their common prefix (the protocol's ``prefix_cache``), instead of lm-eval's padded batches; generate one
    group's items at a time (a subject, task or language: they share their exemplars), each batch from the
    cached keys and values of its prompts' common prefix."""

    draft_tokens: int = 0
    """Prompt-lookup draft tokens checked per decoding step of the greedy ``stop_after_text`` loop, shared by the
    running rows (the protocol's ``draft_tokens``; 0 = one token a step)."""

    _generation_prefix: PrefixCache | None = None

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if not self.prefix_cache or self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        # context order puts requests with a common prefix next to each other; of one context, the one-token
        # continuations come first (they share one forward)
        order = sorted(range(len(requests)),
                       key=lambda i: (requests[i][1], len(requests[i][2]) > 1, requests[i][2]))
        state = PrefixCache()
        for i in tqdm(order, disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests"):
            request, context, continuation = requests[i]
            if not context or not continuation or len(continuation) > self.max_length:  # HFLM's checks
                raise ValueError(f"log-likelihood request with {len(context)} context and {len(continuation)} "
                                 f"continuation tokens (each ≥ 1, the continuation ≤ {self.max_length})")
            inputs = (context + continuation)[-(self.max_length + 1):][:-1]  # HFLM's left truncation
            if len(continuation) == 1 and inputs == state.tokens:  # another one-token answer to the same context
                logprobs = state.last
            else:
                keep = state.reuse(inputs, recompute=len(continuation))
                with torch.no_grad():
                    out = self.model(input_ids=torch.tensor([inputs[keep:]], device=self.device),
                                     past_key_values=state.cache, use_cache=True, logits_to_keep=len(continuation))
                logprobs = torch.log_softmax(out.logits[0, -len(continuation):].float(), dim=-1)
                state.cache, state.tokens, state.last = out.past_key_values, inputs, logprobs[-1:]
            target = torch.tensor(continuation, device=logprobs.device)
            answer = (float(logprobs.gather(1, target[:, None]).sum()), bool((logprobs.argmax(-1) == target).all()))
            results[i] = answer
            if request is not None:
                self.cache_hook.add_partial("loglikelihood", request, answer)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if not self.prefix_cache or self.backend != "causal":
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        # lm-eval batches by prompt length across groups: a group of a batch or more runs on its own, so that its
        # batches share its exemplars; smaller groups run together, in fuller batches
        groups: dict[str, list[int]] = defaultdict(list)
        for i, request in enumerate(requests):
            groups[str((request.doc or {}).get("group"))].append(i)
        size = self.batch_size if isinstance(self.batch_size, int) else 1
        small = [i for members in groups.values() if len(members) < size for i in members]
        parts = [members for members in groups.values() if len(members) >= size] + ([small] if small else [])
        outputs: list[str] = [""] * len(requests)
        self._generation_prefix = PrefixCache()
        try:
            for members in parts:
                texts = super().generate_until([requests[i] for i in members], disable_tqdm=disable_tqdm)
                for i, text in zip(members, texts, strict=True):
                    outputs[i] = text
        finally:
            self._generation_prefix = None
        return outputs

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        mask = generation_kwargs.get("attention_mask")
        if self._generation_prefix is None or mask is None:
            return self._generate(context, max_length, stop, **generation_kwargs)
        prefix, ids, mask = shared_prefix_inputs(context, mask, self.tokenizer.pad_token_id)
        cache = self._cached_prefix(prefix, ids.shape[0]) if len(prefix) >= MIN_SHARED_TOKENS else DynamicCache()
        new_tokens = max_length - context.shape[1]
        after_text = generation_kwargs.get("stop_after_text")
        if after_text and not generation_kwargs.get("do_sample") and self._plain_greedy():
            generated = self._greedy_until(ids, mask, cache, new_tokens, [*after_text, *stop])
        else:
            generation_kwargs.update(attention_mask=mask, past_key_values=cache)
            generated = self._generate(ids, ids.shape[1] + new_tokens, stop, **generation_kwargs)[:, ids.shape[1]:]
        return torch.cat([context, generated], dim=1)  # as lm-eval cuts it: after the padded context

    def _cached_prefix(self, prefix: list[int], batch: int):
        """A copy of ``prefix``'s keys and values for each of ``batch`` rows, from the group's cache (extended or
        cropped to ``prefix``; generation appends to the copy, never to the cache)."""
        state = self._generation_prefix
        keep = state.reuse(prefix, recompute=0)
        if keep < len(prefix):  # the group's first batch, or a batch that shares more than the last one
            with torch.no_grad():
                out = self.model(input_ids=torch.tensor([prefix[keep:]], device=self.device),
                                 past_key_values=state.cache, use_cache=True, logits_to_keep=1)
            state.cache, state.tokens = out.past_key_values, prefix
        cache = copy.deepcopy(state.cache)
        cache.batch_repeat_interleave(batch)
        return cache

    @torch.no_grad()
    def _greedy_until(self, ids: torch.Tensor, mask: torch.Tensor, cache, new_tokens: int, stops: list[str]
                      ) -> torch.Tensor:
        """Greedy decoding under ``stop_after_text`` that drops a row from the batch as soon as it has stopped (a
        stop sequence after its first text, or an end-of-sequence token), so that a batch costs its rows' own
        lengths instead of its size × its longest row's; ``generate``'s tokens (tested), padded after the stop.
        ``ids`` and ``mask`` are the whole prompts, ``cache`` holds the keys and values of their first tokens.

        With ``draft_tokens`` a step also runs each row's prompt-lookup draft (``row_drafts``: up to ⌊draft_tokens
        / rows⌋ tokens, padded to the longest row's) after its last token and keeps the drafted tokens up to the
        first that greedy decoding would not have chosen, plus the choice there: the same tokens for fewer steps.
        The rejected drafts' keys and values stay in the cache, masked, as padding does (positions run over the
        kept tokens)."""
        pad = self.tokenizer.pad_token_id
        out = torch.full((ids.shape[0], max(new_tokens, 0)), pad, dtype=ids.dtype, device=ids.device)
        criterion = StopAfterText(self.tokenizer, stops, ids.shape[1])
        processor = NoEndBeforeText(self.tokenizer, self._end_ids(), ids.shape[1])
        ends = set(self._generation_eos())  # what ends a row in generate
        rows = list(range(ids.shape[0]))  # the batch row of each running sequence
        prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
        completions: list[list[int]] = [[] for _ in rows]
        drafts: list[list[int]] = [[] for _ in rows]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # over unmasked tokens: the padding adds none
        done = cache.get_seq_length()
        step, step_positions, last = ids[:, done:], positions[:, done:], positions[:, -1]
        while new_tokens > 0:
            width = len(drafts[0]) + 1  # the positions scored: after the last token and after each drafted one
            with grouped_query_attention(step.shape[1] > 1 and step.device.type == "cpu"):
                logits = self.model(input_ids=step, attention_mask=mask, position_ids=step_positions,
                                    past_key_values=cache, use_cache=True, logits_to_keep=width).logits.float()
            chosen: list[list[int]] = [[] for _ in rows]
            alive = list(range(len(rows)))  # rows whose drafts so far are what greedy decoding chooses
            for j in range(width):
                if not alive:
                    break
                picks = self._next_tokens(processor, [prompts[i] for i in alive],
                                          [completions[i] + drafts[i][:j] for i in alive], logits[alive, j])
                for i, token in zip(alive, picks, strict=True):
                    chosen[i].append(token)
                alive = [i for i in alive if j < width - 1 and drafts[i][j] == chosen[i][j]]
            kept, counts = self._until_stop(criterion, ends, completions, chosen, new_tokens)
            for i, count in enumerate(counts):
                out[rows[i], len(completions[i]):len(completions[i]) + count] = torch.tensor(chosen[i][:count])
                completions[i] += chosen[i][:count]
                mask[i, mask.shape[1] - width + count:] = 0  # rejected drafts: cached, never attended to
            if not kept:
                break
            most = max(counts[i] for i in kept)
            if len(kept) < len(rows):
                cache.batch_select_indices(torch.tensor(kept, device=ids.device))
                mask, last = mask[kept], last[kept]
                rows, prompts, completions = [rows[i] for i in kept], [prompts[i] for i in kept], \
                    [completions[i] for i in kept]
            if most < width:  # the columns no kept row uses (a negative count: every transformers version)
                cache.crop(most - width)
                mask = mask[:, :mask.shape[1] - width + most]
            last = last + torch.tensor([counts[i] for i in kept], device=last.device)
            count = min(self._draft_budget() // len(rows), max(new_tokens - len(c) for c in completions) - 1)
            drafts = row_drafts([p + c for p, c in zip(prompts, completions, strict=True)], pad, count)
            step = torch.tensor([[c[-1], *d] for c, d in zip(completions, drafts, strict=True)],
                                dtype=ids.dtype, device=ids.device)
            step_positions = last[:, None] + torch.arange(step.shape[1], device=last.device)
            mask = torch.cat([mask, mask.new_ones(step.shape)], dim=1)
        return out

    def _next_tokens(self, processor: NoEndBeforeText, prompts: list[list[int]], completions: list[list[int]],
                     logits: torch.Tensor) -> list[int]:
        """The greedy choice after each prompt + completion so far from its next-token ``logits``: the argmax,
        end-of-sequence held back while the completion is blank (the prompts name the rows; tests key on them)."""
        return processor.hold_back(completions, logits).argmax(-1).tolist()

    def _draft_budget(self) -> int:
        """``draft_tokens``, or 0 for a model whose attention window is counted in cache slots (a sliding window:
        the rejected drafts' slots would shift it)."""
        return 0 if getattr(self.model.config, "sliding_window", None) else self.draft_tokens

    @staticmethod
    def _until_stop(criterion: StopAfterText, ends: set[int], completions: list[list[int]],
                    chosen: list[list[int]], new_tokens: int) -> tuple[list[int], list[int]]:
        """Which rows run on, and how many of each row's ``chosen`` tokens it keeps (up to and with the token at
        which ``generate`` would stop it: a stop sequence, an end token, ``new_tokens`` in all)."""
        limits = [min(len(tokens), new_tokens - len(done)) for tokens, done in zip(chosen, completions, strict=True)]
        candidates = [(i, n) for i, limit in enumerate(limits) for n in range(1, limit + 1)]
        stopped = dict(zip(candidates, criterion.stopped([completions[i] + chosen[i][:n] for i, n in candidates]),
                           strict=True))
        kept, counts = [], []
        for i, (tokens, limit) in enumerate(zip(chosen, limits, strict=True)):
            count = next((n for n in range(1, limit + 1) if stopped[i, n] or tokens[n - 1] in ends), None)
            counts.append(count or limit)
            if count is None and len(completions[i]) + limit < new_tokens:
                kept.append(i)
        return kept, counts

    def _plain_greedy(self) -> bool:
        """Whether the model's generation config asks greedy decoding for nothing but its end-of-sequence tokens
        (no repetition penalty, banned or forced tokens, minimum length, …): all that ``_greedy_until`` applies."""
        settings = set(self.model.generation_config.to_diff_dict()) - PLAIN_GREEDY_SETTINGS
        return not settings

    def _generation_eos(self) -> list[int]:
        """The end-of-sequence tokens of the model's generation config (one id or a list; none set: empty)."""
        ends = self.model.generation_config.eos_token_id
        return [e for e in (ends if isinstance(ends, list) else [ends]) if e is not None]

    def _end_ids(self) -> list[int]:
        """The end-of-sequence tokens that ``stop_after_text`` holds back until a completion has text."""
        return sorted({self.tokenizer.eos_token_id, *self._generation_eos()} - {None})

    def _generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        after_text = generation_kwargs.pop("stop_after_text", None)
        if not after_text:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        # HFLM._model_generate's decoding settings (greedy unless sampling), with this stopping criterion
        if not generation_kwargs.get("do_sample"):
            generation_kwargs.pop("temperature", None)
            generation_kwargs["do_sample"] = False
        criteria = StoppingCriteriaList([StopAfterText(self.tokenizer, [*after_text, *stop], context.shape[1])])
        processors = LogitsProcessorList([NoEndBeforeText(self.tokenizer, self._end_ids(), context.shape[1])])
        return self.model.generate(input_ids=context, max_length=max_length, stopping_criteria=criteria,
                                   logits_processor=processors, pad_token_id=self.tokenizer.pad_token_id,
                                   use_cache=True, **generation_kwargs)
