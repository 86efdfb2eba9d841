"""The prefix cache of log-likelihood requests (protocol ``prefix_cache``): the scores of lm-eval's padded
batches, to float rounding, for fewer tokens run."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from spiel.evaluate.lm import ProtocolLM, common_prefix
from spiel.evaluate.stops import NoEndBeforeText


def test_common_prefix_is_the_longest_shared_start():
    assert common_prefix([1, 2, 3, 4], [1, 2, 5]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2 and common_prefix([], [1]) == 0 and common_prefix([7], [8]) == 0


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


@pytest.mark.parametrize("stop_after_text", [False, True])
def test_generation_from_a_cached_prefix_equals_plain_batches(training_setup, stop_after_text, monkeypatch):
    """Greedy completions with ``prefix_cache`` (one group at a time, each batch from its prompts' cached common
    prefix, the padding between prefix and remainder; under ``stop_after_text`` each row leaves the batch when it
    stops) are token for token lm-eval's left-padded batches; the exemplars run once per group, not per prompt."""
    from spiel.adapters import load_base

    model, tokenizer = load_base(training_setup / "model")
    lm = ProtocolLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=3)

    def run(cached: bool, stop: str) -> tuple[list[str], list[tuple[int, ...]]]:
        gen_kwargs = {"until": [stop], "max_gen_toks": 12, "do_sample": False}
        if stop_after_text:
            gen_kwargs.update(until=[], stop_after_text=[stop])
        seen = []
        forward = model.forward

        def counting(*args, **kwargs):
            seen.append(tuple(kwargs["input_ids"].shape))
            return forward(*args, **kwargs)

        lm.prefix_cache, model.forward = cached, counting
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

    monkeypatch.setattr(NoEndBeforeText, "__call__", record)
    unstopped = run(False, "\x07")[0]
    # a stop that some rows of the pooled batch (the two small groups: one batch of 3) meet midway and others not
    groups = [r.doc["group"] for r in _generation_requests(tokenizer, {})]
    stop = _stop_met_by_some([o for o, g in zip(unstopped, groups, strict=True) if g in ("task_c", "task_d")])
    logits[False].clear()
    plain, plain_calls = run(False, stop)
    recording = logits[True]
    cached, cached_calls = run(True, stop)
    assert cached == plain and any(o.strip() for o in cached) and plain != unstopped
    tokens = {name: sum(b * n for b, n in calls) for name, calls in (("plain", plain_calls), ("cached", cached_calls))}
    assert tokens["cached"] < 0.6 * tokens["plain"]
    if stop_after_text:  # a finished row leaves its batch: a decoding step runs fewer rows than the step before it
        assert any(b < a for (a, n), (b, m) in itertools.pairwise(cached_calls) if n == m == 1)
        # and every step's logits are generate's, to float rounding (positions, mask and cache agree)
        assert logits[True].keys() <= logits[False].keys() and len(logits[True]) > 20
        for key, value in logits[True].items():
            torch.testing.assert_close(value, logits[False][key], rtol=0, atol=1e-4)
        # a generation setting the greedy loop does not apply (a repetition penalty) sends the batch to generate
        model.generation_config.repetition_penalty = 3.0
        try:
            penalized = run(False, stop)[0]
            assert run(True, stop)[0] == penalized != plain
        finally:
            model.generation_config.repetition_penalty = 1.0
