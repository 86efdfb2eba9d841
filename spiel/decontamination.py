"""Decontamination of training data against the evaluation items: word 13-grams, hashed, in one pass.

A training conversation is dropped when it shares a word 13-gram with any evaluation text field (an item or an
exemplar), or contains the whole of an evaluation text of 8–12 words. Each n-gram is represented by a 64-bit
polynomial hash of its words' hashes, computed for all windows of a text at once with numpy; the evaluation
hashes form one sorted array per n-gram length, and a conversation is looked up with a binary search. Hashes of
different n-grams can collide: with ~10⁷ evaluation n-grams and ~3·10⁸ training windows (Tülu v2 at full size)
about 10⁻⁴ conversations are expected to be dropped wrongly, and none is ever kept wrongly. Word hashes are
Python's string hash, consistent within the one process that builds the index and checks the data.

Conversations are checked in chunks: their words are concatenated, every window is hashed at once (windows that
cross from one conversation into the next are discarded), a bitmap of the evaluation hashes' top bits rejects
almost every window with one memory access, and only the rest are looked up in the sorted arrays.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .jsonl import read_jsonl

NGRAM = 13
MIN_WORDS = 8
"""Evaluation texts shorter than this many words are not matched (too generic: "Answer: A")."""
CHUNK = 2000
"""Conversations checked together (their words held at once: ~1.5M words, ~40 MB of window hashes per length)."""
_BASE = np.uint64(0x9E3779B97F4A7C15)
_SKIPPED_FIELDS = ("split", "group", "source")
_WORD = re.compile(r"\w+")


def word_hashes(text: str) -> np.ndarray:
    """The hash of each lower-cased word (``\\w+``) of ``text``, in order."""
    words = _WORD.findall(text.lower())
    return np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)


def window_hashes(words: np.ndarray, size: int) -> np.ndarray:
    """The hash of every window of ``size`` consecutive words (empty when there are fewer words)."""
    count = words.size - size + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    hashes = words[:count].copy()
    with np.errstate(over="ignore"):
        for offset in range(1, size):
            hashes *= _BASE
            hashes += words[offset:offset + count]
    return hashes


class NgramIndex:
    """Sorted hashes of the evaluation n-grams, one array per n-gram length (13, or a shorter whole text), and a
    bitmap of their top :data:`FILTER_BITS` bits."""

    FILTER_BITS = 26

    def __init__(self, hashes: dict[int, np.ndarray]) -> None:
        self.hashes = {size: np.unique(h) for size, h in hashes.items() if h.size}
        self.filter = np.zeros(1 << self.FILTER_BITS, dtype=bool)
        for known in self.hashes.values():
            self.filter[known >> np.uint64(64 - self.FILTER_BITS)] = True

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, Any]], n: int = NGRAM, min_words: int = MIN_WORDS) -> NgramIndex:
        """Word n-grams of every text field of every evaluation row (a text shorter than ``n`` words counts whole)."""
        parts: dict[int, list[np.ndarray]] = {}
        for row in rows:
            for key, value in row.items():
                if key in _SKIPPED_FIELDS or not isinstance(value, str):
                    continue
                words = word_hashes(value)
                if words.size < min_words:
                    continue
                size = min(n, words.size)
                parts.setdefault(size, []).append(window_hashes(words, size))
        return cls({size: np.concatenate(arrays) for size, arrays in parts.items()})

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> NgramIndex:
        """The index of prepared evaluation JSONL files (one item per line)."""
        return cls.from_rows(row for path in paths for _, row in read_jsonl(Path(path)))

    def __len__(self) -> int:
        return sum(h.size for h in self.hashes.values())

    def overlapping(self, texts: Sequence[str]) -> np.ndarray:
        """For each text, whether any of its word windows is one of the evaluation n-grams."""
        words = [word_hashes(text) for text in texts]
        lengths = np.array([w.size for w in words], dtype=np.int64)
        found = np.zeros(len(texts), dtype=bool)
        if not lengths.sum():
            return found
        joined = np.concatenate(words)
        owner = np.repeat(np.arange(len(texts)), lengths)  # the text each word belongs to
        for size, known in self.hashes.items():
            windows = window_hashes(joined, size)
            if not windows.size:
                continue
            starts = np.flatnonzero(self.filter[windows >> np.uint64(64 - self.FILTER_BITS)])
            starts = starts[owner[starts] == owner[starts + size - 1]]  # not across two texts
            candidates = windows[starts]
            at = np.searchsorted(known, candidates).clip(max=known.size - 1)
            found[owner[starts[known[at] == candidates]]] = True
        return found

    def overlaps(self, text: str) -> bool:
        """Whether any word window of ``text`` is one of the evaluation n-grams."""
        return bool(self.overlapping([text])[0])


def conversation_text(conversation: dict[str, Any]) -> str:
    return " ".join(m["content"] for m in conversation["messages"])


def without_overlaps(index: NgramIndex, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversations of ``rows`` that share no n-gram with the index, checked :data:`CHUNK` at a time."""
    kept = []
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start:start + CHUNK]
        found = index.overlapping([conversation_text(row) for row in chunk])
        kept += [row for row, dropped in zip(chunk, found, strict=True) if not dropped]
    return kept


def decontaminate(rows: list[dict[str, Any]], eval_files: list[Path]) -> tuple[list[dict[str, Any]], int]:
    """``rows`` without any conversation overlapping an evaluation file's items; returns (kept, dropped)."""
    kept = without_overlaps(NgramIndex.from_files(eval_files), rows)
    return kept, len(rows) - len(kept)
