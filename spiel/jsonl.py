"""Reading JSONL files (one JSON value per line, gzipped if ``.gz``) with errors that name the file and line."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class JsonlError(ValueError):
    """A JSONL file that cannot be read: the message names the file (and the line)."""


def read_jsonl(path: str | Path, what: str = "JSONL file") -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line. Each line is decoded on its own, so a byte that is not UTF-8
    (a binary or compressed file) is reported on its line."""
    path = Path(path)
    if not path.is_file():
        raise JsonlError(f"{path}: " + (f"a folder, not a {what}" if path.is_dir() else f"no such {what}"))
    line = 0
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as handle:
            for line, raw in enumerate(handle, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise JsonlError(f"{path}:{line}: not UTF-8 text (a binary or compressed file?)") from None
                if text.strip():
                    try:
                        yield line, json.loads(text)
                    except json.JSONDecodeError as error:
                        raise JsonlError(f"{path}:{line}: not valid JSON ({error.msg}); expected one JSON object per "
                                         "line") from None
    except (EOFError, gzip.BadGzipFile) as error:
        raise JsonlError(f"{path}:{line + 1}: a damaged gzip file ({error})") from None
