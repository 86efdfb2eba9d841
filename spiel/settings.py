"""TrainConfig: the settings of the one training loop (App. B), each checked when given. Light to import (no
torch): the workflow checks a config's training section with it before any job runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .options import OptionError


@dataclass
class TrainConfig:
    epochs: int = 2
    batch_size: int = 128
    """Effective batch size (sequences per optimizer step)."""
    micro_batch_size: int = 4
    max_length: int = 2048
    warmup_ratio: float = 0.03
    seed: int = 0
    checkpoint_every: int = 50
    """Optimizer steps between checkpoints (0 = never)."""
    gradient_checkpointing: bool = False
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: ``auto`` (CUDA when visible), ``cpu`` or ``cuda``."""
    hp: dict[str, Any] = field(default_factory=dict)
    """Method hyperparameters: lr, rank, weight_decay, update_interval, … (``methods.check_hyperparameters``)."""

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "micro_batch_size", "max_length"):
            if getattr(self, key) < 1:
                raise OptionError(f"{key}={getattr(self, key)}: must be a positive integer")
        if self.batch_size % self.micro_batch_size:
            raise OptionError(f"batch_size={self.batch_size}: must be a multiple of micro_batch_size="
                              f"{self.micro_batch_size} (the effective batch is accumulated from micro-batches)")
        if not 0 <= self.warmup_ratio < 1:
            raise OptionError(f"warmup_ratio={self.warmup_ratio}: must be in [0, 1)")
        if self.checkpoint_every < 0:
            raise OptionError(f"checkpoint_every={self.checkpoint_every}: must be >= 0 (0 = never)")
