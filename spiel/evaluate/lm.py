"""The evaluated model as lm-eval sees it: lm-eval's ``HFLM``, with the protocol's ``stop_after_text`` stops and
its ``prefix_cache``: requests that share a prompt prefix (a subject's few-shot exemplars, a question's answer
choices, a task's exemplars before each generated answer) compute that prefix's keys and values once."""

from __future__ import annotations

import copy
from collections import defaultdict

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
        ``ids`` and ``mask`` are the whole prompts, ``cache`` holds the keys and values of their first tokens."""
        batch, length = ids.shape
        out = torch.full((batch, new_tokens), self.tokenizer.pad_token_id, dtype=ids.dtype, device=ids.device)
        criterion = StopAfterText(self.tokenizer, stops, length)
        ends = torch.tensor(self._generation_eos(), dtype=ids.dtype, device=ids.device)  # what ends a row in generate
        processor = NoEndBeforeText(self.tokenizer, self._end_ids(), length)
        rows = torch.arange(batch, device=ids.device)  # the batch row of each running sequence
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # over unmasked tokens: the padding adds none
        done = cache.get_seq_length()
        step, step_positions, sequences = ids[:, done:], positions[:, done:], ids
        for t in range(new_tokens):
            logits = self.model(input_ids=step, attention_mask=mask, position_ids=step_positions,
                                past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
            token = processor(sequences, logits).argmax(-1)
            out[rows, t] = token
            sequences = torch.cat([sequences, token[:, None]], dim=1)
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            running = ~(criterion(sequences, logits) | torch.isin(token, ends))
            if not running.any():
                break
            if not running.all():
                kept = running.nonzero()[:, 0]
                cache.batch_select_indices(kept)
                rows, sequences, mask, token = rows[kept], sequences[kept], mask[kept], token[kept]
                step_positions = step_positions[kept]
            step, step_positions = token[:, None], step_positions[:, -1:] + 1
        return out

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
