"""The prefix cache of log-likelihood requests (protocol ``prefix_cache``): the scores of lm-eval's padded
batches, to float rounding, for fewer tokens run."""

from __future__ import annotations

import itertools
import os
import random

import pytest
import torch
import transformers.integrations.sdpa_attention as sdpa

import spiel.evaluate.lm as lm_module
from spiel.evaluate.lm import ProtocolLM, common_prefix, lookup_draft, row_drafts
from spiel.evaluate.stops import NoEndBeforeText


def test_common_prefix_is_the_longest_shared_start():
    assert common_prefix([1, 2, 3, 4], [1, 2, 5]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2 and common_prefix([], [1]) == 0 and common_prefix([7], [8]) == 0


def test_lookup_draft_is_what_followed_the_latest_earlier_occurrence_of_the_tail():
    tokens = [5, 6, 7, 8, 9, 5, 6, 7, 1, 2, 5, 6, 7]
    assert lookup_draft(tokens, 2) == [1, 2]  # the tail 5 6 7 last occurred before at index 5
    assert lookup_draft(tokens, 9) == [1, 2, 5, 6, 7]  # up to the end of the sequence
    assert lookup_draft([1, 2, 3, 9, 3], 4) == [9, 3]  # no earlier 3 9 3 nor 9 3: the tail 3, at index 2
    assert lookup_draft([1, 2, 3, 4, 9, 3, 5, 2, 3], 2) == [4, 9]  # the 2-gram 2 3 before the later 1-gram 3
    assert lookup_draft([1, 2, 3], 4) == [] and lookup_draft([4], 2) == []


def test_row_drafts_are_padded_to_the_longest_found_and_absent_where_none_is():
    rows = [[5, 6, 7, 5, 6], [1, 2, 3], [9, 8, 9]]  # drafts 7 5 6; none; 8 9
    assert row_drafts(rows, 0, 3) == [[7, 5, 6], [0, 0, 0], [8, 9, 0]]
    assert row_drafts(rows, 0, 2) == [[7, 5], [0, 0], [8, 9]]
    assert row_drafts([[1, 2, 3], [4, 5]], 0, 24) == [[], []]  # no row has one: the step scores one position
    assert row_drafts(rows, 0, 0) == [[], [], []]


def test_cached_log_likelihoods_equal_the_uncached_ones(training_setup):
    """Requests as few-shot multiple choice makes them: two subjects' exemplar prefixes, several questions each,
    continuations of one to three tokens; one request a prefix of another. Tolerance 1e-4 nats (fp32)."""
    from spiel.adapters import load_base

    model, tokenizer = load_base(training_setup / "model")
    lm = ProtocolLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=4)
    rng = random.Random(0)
    vocab = model.config.vocab_size
    requests = []
    for _ in range(2):
        exemplars = [rng.randrange(vocab) for _ in range(40)]
        for _ in range(3):
            question = exemplars + [rng.randrange(vocab) for _ in range(rng.randint(3, 9))]
            for length in (1, 1, 2, 3):
                requests.append((None, question, [rng.randrange(vocab) for _ in range(length)]))
    requests.append((None, requests[0][1][:20], requests[0][1][20:23]))  # context inside another's prefix
    rng.shuffle(requests)
    lm.prefix_cache = False
    batched = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    lm.prefix_cache = True
    seen = []
    forward = model.forward

    def counting(*args, **kwargs):
        seen.append(kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    model.forward = counting
    try:
        cached = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    finally:
        model.forward = forward
    assert [g for _, g in cached] == [g for _, g in batched]
    assert [ll for ll, _ in cached] == pytest.approx([ll for ll, _ in batched], abs=1e-4)
    total = sum(len(c + x) - 1 for _, c, x in requests)
    assert sum(seen) < total / 2  # the shared prefixes ran once
    assert len(seen) == len(requests) - 6  # each question's second one-token answer reuses the first's forward
    with torch.no_grad():  # and one request by hand: Σ log p(continuation | context)
        _, context, continuation = requests[0]
        logits = model(input_ids=torch.tensor([context + continuation])).logits[0, len(context) - 1:-1]
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(continuation)[:, None]).sum().item()
    assert cached[0][0] == pytest.approx(expected, abs=1e-4)


def _generation_requests(tokenizer, gen_kwargs: dict) -> list:
    """Few-shot prompts of four groups: each group's exemplars, then a question of its own length; two groups of
    five (each runs on its own from its cached exemplars) and two smaller than a batch (run together, from no
    cache: their prompts share no prefix)."""
    from lm_eval.api.instance import Instance

    rng = random.Random(1)
    words = ["apple", "river", "seven", "blue", "stone", "quick", "north", "paper", "lamp", "green"]
    requests = []
    for group, size in (("task_a", 5), ("task_b", 5), ("task_c", 1), ("task_d", 2)):
        exemplars = " ".join(rng.choice(words) for _ in range(60)) + "\n\n"
        for i in range(size):
            question = "Q: " + " ".join(rng.choice(words) for _ in range(rng.randint(2, 12))) + "\nA:"
            requests.append(Instance("generate_until", {"group": group}, (exemplars + question, dict(gen_kwargs)),
                                     idx=0, metadata=("t", i, 1)))
    rng.shuffle(requests)
    assert min(len(tokenizer(r.args[0]).input_ids) for r in requests) > 40
    return requests


def _stop_met_by_some(outputs: list[str]) -> str:
    """A stop that about half of the completions hold after their first character and the others not: rows of one
    batch then stop at different steps, or run on."""
    for width in (1, 2):
        candidates = sorted({text[i:i + width] for text in outputs for i in range(1, len(text) - width)})
        counts = {c: sum(c in o[1:] for o in outputs) for c in candidates}
        fitting = [c for c, n in counts.items() if 0.3 * len(outputs) <= n <= 0.7 * len(outputs)]
        if fitting:
            return min(fitting, key=lambda c: (abs(counts[c] - len(outputs) / 2), c))
    raise AssertionError(f"no stop separates {outputs}")


@pytest.mark.parametrize(("stop_after_text", "draft_tokens"), [(False, 0), (True, 0), (True, 9)])
def test_generation_from_a_cached_prefix_equals_plain_batches(training_setup, stop_after_text, draft_tokens,
                                                              monkeypatch):
    """Greedy completions with ``prefix_cache`` (one group at a time, each batch from its prompts' cached common
    prefix, the padding between prefix and remainder; under ``stop_after_text`` each row leaves the batch when it
    stops, and with ``draft_tokens`` a step verifies prompt-lookup drafts) are token for token lm-eval's
    left-padded batches; the exemplars run once per group, not per prompt."""
    from spiel.adapters import load_base

    model, tokenizer = load_base(training_setup / "model")
    lm = ProtocolLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=3)

    def run(cached: bool, stop: str, drafts: int = draft_tokens) -> tuple[list[str], list[tuple[int, ...]]]:
        gen_kwargs = {"until": [stop], "max_gen_toks": 12, "do_sample": False}
        if stop_after_text:
            gen_kwargs.update(until=[], stop_after_text=[stop])
        seen = []
        forward = model.forward

        def counting(*args, **kwargs):
            seen.append(tuple(kwargs["input_ids"].shape))
            return forward(*args, **kwargs)

        lm.prefix_cache, lm.draft_tokens, model.forward = cached, drafts, counting
        try:
            return lm.generate_until(_generation_requests(tokenizer, gen_kwargs), disable_tqdm=True), seen
        finally:
            model.forward = forward

    logits: dict[bool, dict[tuple[int, ...], torch.Tensor]] = {False: {}, True: {}}
    recording = logits[False]
    hold_back = NoEndBeforeText.__call__

    def record(self, input_ids, scores):  # each sequence's next-token logits, keyed by its unpadded tokens
        for row, score in zip(input_ids.tolist(), scores, strict=True):  # (generate runs on after a row stops)
            recording.setdefault(tuple(t for t in row if t != tokenizer.pad_token_id), score.clone())
        return hold_back(self, input_ids, scores)

    next_tokens = ProtocolLM._next_tokens

    def record_loop(self, processor, prompts, completions, scores):  # the same, in the greedy loop
        for prompt, completion, score in zip(prompts, completions, scores, strict=True):
            recording.setdefault((*prompt, *completion), score.clone())
        return next_tokens(self, processor, prompts, completions, scores)

    monkeypatch.setattr(NoEndBeforeText, "__call__", record)
    monkeypatch.setattr(ProtocolLM, "_next_tokens", record_loop)
    unstopped = run(False, "\x07")[0]
    # a stop that some rows of the pooled batch (the two small groups: one batch of 3) meet midway and others not
    groups = [r.doc["group"] for r in _generation_requests(tokenizer, {})]
    stop = _stop_met_by_some([o for o, g in zip(unstopped, groups, strict=True) if g in ("task_c", "task_d")])
    logits[False].clear()
    plain, plain_calls = run(False, stop)
    recording = logits[True]
    if draft_tokens:
        # drafts from an oracle that knows greedy decoding's next tokens (a token-a-step run's), in turn right or
        # wrong from their first, second, … token on: drafts kept whole, rejected partway, rejected at once
        following: dict[tuple[int, ...], int] = {}

        def remember(self, processor, prompts, completions, scores):
            picks = next_tokens(self, processor, prompts, completions, scores)
            following.update({(*p, *c): t for p, c, t in zip(prompts, completions, picks, strict=True)})
            return picks

        monkeypatch.setattr(ProtocolLM, "_next_tokens", remember)
        one_a_step, one_a_step_calls = run(True, stop, drafts=0)
        monkeypatch.setattr(ProtocolLM, "_next_tokens", record_loop)
        drafted = itertools.count()

        def oracle(tokens: list[int], count: int) -> list[int]:
            draft, key = [], tuple(tokens)
            while len(draft) < count and key in following:
                draft.append(following[key])
                key += (draft[-1],)
            wrong = next(drafted) % (len(draft) + 1)
            if wrong < len(draft):
                draft[wrong:] = [(t + 1) % model.config.vocab_size for t in draft[wrong:]]
            return draft

        monkeypatch.setattr(lm_module, "lookup_draft", oracle)
        copies = []  # and no step copies key/value heads (grouped_query_attention is on in the loop)
        repeat_kv = sdpa.repeat_kv
        monkeypatch.setattr(sdpa, "repeat_kv", lambda *a: copies.append(1) or repeat_kv(*a))
    cached, cached_calls = run(True, stop)
    assert cached == plain and any(o.strip() for o in cached) and plain != unstopped
    if draft_tokens:  # the same completions in fewer forward passes than a token a step
        assert one_a_step == cached and len(cached_calls) < 0.6 * len(one_a_step_calls) and not copies
    else:
        tokens = {name: sum(b * n for b, n in calls) for name, calls in (("plain", plain_calls),
                                                                          ("cached", cached_calls))}
        assert tokens["cached"] < 0.6 * tokens["plain"]
    if stop_after_text and not draft_tokens:  # a finished row leaves its batch: a step runs fewer rows than before
        assert any(b < a for (a, n), (b, m) in itertools.pairwise(cached_calls) if n == m == 1)
    if stop_after_text:
        # and every step's logits are generate's, to float rounding (positions, mask and cache agree)
        # (a step with drafts also scores the drafted tokens after a row's stop, which generate never runs)
        shared = logits[True].keys() & logits[False].keys()
        assert len(shared) > 20 and (draft_tokens or logits[True].keys() <= shared)
        for key in shared:
            torch.testing.assert_close(logits[True][key], logits[False][key], rtol=0, atol=1e-4)
        # a generation setting the greedy loop does not apply (a repetition penalty) sends the batch to generate
        model.generation_config.repetition_penalty = 3.0
        try:
            penalized = run(False, stop)[0]
            assert run(True, stop)[0] == penalized != plain
        finally:
            model.generation_config.repetition_penalty = 1.0


def test_grouped_query_attention_attends_in_place_with_the_same_outputs(training_setup, monkeypatch):
    """A padded batch of several queries per row (a prompt's remainder, a step with drafts) under
    ``grouped_query_attention``: transformers' SDPA copies no key/value head (``repeat_kv`` unused), and the logits
    are those without it (fp32, 1e-5)."""
    from spiel.adapters import load_base
    from spiel.evaluate.lm import FORCE_GQA, grouped_query_attention

    monkeypatch.delenv(FORCE_GQA, raising=False)
    model, _ = load_base(training_setup / "model")
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    ids = torch.randint(3, model.config.vocab_size, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = mask[2, 2:5] = 0  # left padding, and a hole as rejected drafts leave
    copies = []
    repeat_kv = sdpa.repeat_kv
    monkeypatch.setattr(sdpa, "repeat_kv", lambda *a: copies.append(1) or repeat_kv(*a))
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        assert copies
        copies.clear()
        with grouped_query_attention():
            grouped = model(input_ids=ids, attention_mask=mask).logits
        assert not copies and FORCE_GQA not in os.environ  # restored
    torch.testing.assert_close(grouped[mask.bool()], plain[mask.bool()], rtol=0, atol=1e-5)
