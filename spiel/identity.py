"""What a run trains and on which base: the fingerprints that checkpoints and adapters carry.

A checkpoint resumes only the run that wrote it (same method, hyperparameters, settings, data and base model);
an adapter applies only to the base model it was trained on. A base model is known by its architecture and a
checksum of a strided sample of its input embeddings (never tuned by an adapter, never quantized to 4 bits),
rounded to bf16 so that one model loaded in fp32, bf16 or under NF4 has one identity.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

IDENTITY_FILE = "base_model.json"
ARCHITECTURE = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads")
SAMPLE = 4096
"""Embedding values in the checksum."""


class IdentityMismatch(ValueError):
    """An adapter applied to a base model other than the one it was trained on."""


def sample_positions(n: int, k: int = SAMPLE) -> torch.Tensor:
    """``k`` evenly spaced positions in ``range(n)``, first and last included, in integer arithmetic (float
    spacing would round differently per device and CPU kernel beyond 2^24 elements)."""
    k = min(k, n)
    return torch.arange(k, dtype=torch.long) * (n - 1) // max(k - 1, 1)


def base_identity(model: nn.Module) -> dict[str, Any]:
    """Architecture and embedding checksum of a loaded base model (before any adapter is applied)."""
    config = model.config.to_dict()
    weight = model.get_input_embeddings().weight.detach().reshape(-1)
    picked = weight[sample_positions(weight.numel()).to(weight.device)]
    sample = picked.to(torch.bfloat16).float().cpu().numpy().tobytes()
    return {"architecture": {k: config.get(k) for k in ARCHITECTURE},
            "embedding_sha256": hashlib.sha256(sample).hexdigest(), "path": str(config.get("_name_or_path", ""))}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def differences(old: Any, new: Any, key: str = "") -> list[str]:
    """``key: old → new`` for every leaf where two JSON-like values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in differences(old.get(k), new.get(k), f"{key}.{k}" if key else str(k))]
    return [] if old == new else [f"{key}: {old!r} → {new!r}"]


def _compared(identity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in identity.items() if k != "path"}  # a model may move between machines


def save_base_identity(identity: dict[str, Any], folder: Path) -> None:
    (Path(folder) / IDENTITY_FILE).write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n")


def check_base_identity(model: nn.Module, folder: str | Path) -> None:
    """Refuse an adapter trained on another base model than ``model``; warn where the adapter records none."""
    path = Path(folder) / IDENTITY_FILE
    if not path.exists():
        print(f"warning: adapter {folder} records no base model ({IDENTITY_FILE}); it is applied unchecked",
              file=sys.stderr)
        return
    recorded = json.loads(path.read_text())
    found = differences(_compared(recorded), _compared(base_identity(model)))
    if found:
        raise IdentityMismatch(f"adapter {folder} was trained on another base model ({recorded.get('path')!r}; "
                               f"differs in {'; '.join(found[:3])}); apply it to the model it was trained on")


RESUME_INVARIANT = ("checkpoint_every", "device", "gradient_checkpointing")
"""Training settings a resumed run may change: they do not change what is computed (a run that ran out of memory
may resume with activation checkpointing)."""


def run_fingerprint(method: str, settings: dict[str, Any], data_file: Path, base: dict[str, Any]) -> dict[str, Any]:
    """What a training run computes: method, hyperparameters and settings, data file checksum, base model."""
    return {"method": method, "settings": {k: v for k, v in settings.items() if k not in RESUME_INVARIANT},
            "data_sha256": file_sha256(data_file), "base": _compared(base)}
