"""Answer extraction and scoring as in the paper's evaluation (App. B; open-instruct's scripts).

* GSM: the last number of the output, thousands separators removed; exact match (8-shot CoT).
* BBH: the text after "the answer is" up to the next period; exact match (3-shot CoT).
* TyDiQA GoldP: SQuAD-style normalised token F1, max over the gold answers.
* HumanEval: the unbiased pass@k estimator of Chen et al. (2021).
"""

from __future__ import annotations

import collections
import re
import string

import numpy as np

_NUMBER = re.compile(r"[-+]?\d*\.\d+|[-+]?\d+")
_THOUSANDS = re.compile(r"(\d),(\d)")
_BBH_ANSWER = re.compile(r"[tT]he answer is (.*?)(?:\.(?:\s|$)|$)", re.DOTALL)


def gsm_extract(output: str) -> str | None:
    """The last number in ``output`` ("1,234" → "1234", "$5.50" → "5.50"); None if there is none."""
    numbers = _NUMBER.findall(_THOUSANDS.sub(r"\1\2", output))
    return numbers[-1] if numbers else None


def gsm_match(output: str, target: str) -> bool:
    """Exact numeric match of the extracted answer with the gold answer (e.g. "#### 18" → "18")."""
    predicted = gsm_extract(output)
    gold = gsm_extract(target.split("####")[-1])
    if predicted is None or gold is None:
        return False
    return float(predicted) == float(gold)


def bbh_extract(output: str) -> str:
    """Text after the first "the answer is", up to the sentence's period; the stripped output otherwise."""
    found = _BBH_ANSWER.search(output)
    return (found.group(1) if found else output).strip()


def bbh_match(output: str, target: str) -> bool:
    """Exact match; a bare option letter "A" also matches the target "(A)"."""
    predicted = bbh_extract(output)
    if predicted == target:
        return True
    return bool(re.fullmatch(r"\([A-Z]\)", target)) and predicted in (target[1], target)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """Token-level F1 between normalised strings."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def max_f1(prediction: str, golds: list[str]) -> float:
    """F1 against the best-matching gold answer."""
    return max(token_f1(prediction, gold) for gold in golds)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 − C(n−c, k)/C(n, k) from n samples of which c pass (Chen et al., 2021)."""
    if not 0 <= c <= n or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
