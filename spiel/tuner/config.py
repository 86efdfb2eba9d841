"""SpielConfig: every knob of SpIEL, with the paper's defaults (§3, App. C)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

GROWTH = ("ag", "ma")
SCHEDULES = ("linear", "cosine")
GRAD_MODES = ("dense", "sampled")
"""How ∂L/∂φ is computed: gathered from the dense ∂L/∂W (Eq. 6) or only at the active entries (App. E)."""
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIG_NAME = "adapter_config.json"


@dataclass
class SpielConfig:
    """Configuration of one SpIEL adapter.

    Exactly one budget is given: ``density`` (fraction of each targeted tensor), ``num_deltas``
    (total entries over all targets) or ``lora_rank`` (d_φ = LoRA's parameter count at that rank over
    the same modules, App. D). Each tensor then gets the same density (§3.2, footnote 2).
    """

    growth: str = field(default="ag", metadata={"help": "'ag' (accumulated gradients, Adam) or 'ma' (SM3 momenta)."})
    density: float | None = field(default=None, metadata={"help": "Fraction of each targeted tensor that is tunable."})
    num_deltas: int | None = field(default=None, metadata={"help": "Total tunable entries over all targets."})
    lora_rank: int | None = field(default=None, metadata={"help": "Budget equal to LoRA's at this rank."})
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_TARGETS),
                                      metadata={"help": "Names (last component) of the linear layers to tune."})
    update_interval: int = field(default=20, metadata={"help": "S: steps between index updates (App. C)."})
    estimation_steps: int = field(default=5, metadata={"help": "γ: gradient-estimation steps before an update (AG)."})
    replace_rate: float = field(default=0.2, metadata={"help": "ξ: peak fraction of entries replaced (Eq. 8, 11)."})
    schedule: str = field(default="linear", metadata={"help": "'linear' (Eq. 8) or 'cosine' (Eq. 11)."})
    replace_all_first: bool = field(default=True, metadata={
        "help": "Replace every entry at the first update t = γ (Eq. 8). The authors' cosine schedule does not."})
    grad_mode: str = field(default="dense", metadata={
        "help": "∂L/∂φ: 'dense' gathers ∂L/∂W at η (Eq. 6); 'sampled' computes only the active entries (App. E)."})
    values_dtype: str = field(default="auto", metadata={
        "help": "dtype of φ: 'auto' is float32, or bfloat16 when the base is 4-bit (App. C)."})
    seed: int = field(default=0, metadata={"help": "Seed of the initial random index set."})

    def __post_init__(self) -> None:
        budgets = [k for k in ("density", "num_deltas", "lora_rank") if getattr(self, k) is not None]
        if len(budgets) != 1:
            raise ValueError("SpielConfig needs exactly one of density, num_deltas, lora_rank; "
                             f"got {budgets or 'none'}")
        if self.density is not None and not 0.0 < self.density <= 1.0:
            raise ValueError(f"SpielConfig.density must be in (0, 1], got {self.density}")
        for key in ("num_deltas", "lora_rank"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"SpielConfig.{key} must be positive, got {value}")
        for key, allowed in (("growth", GROWTH), ("schedule", SCHEDULES), ("grad_mode", GRAD_MODES)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"SpielConfig.{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.values_dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"SpielConfig.values_dtype must be auto, float32 or bfloat16, got {self.values_dtype!r}")
        if self.estimation_steps < 1 or self.update_interval < self.estimation_steps:
            raise ValueError("SpielConfig needs 1 <= estimation_steps (γ) <= update_interval (S), got "
                             f"γ={self.estimation_steps}, S={self.update_interval}")
        if not 0.0 <= self.replace_rate <= 1.0:
            raise ValueError(f"SpielConfig.replace_rate (ξ) must be in [0, 1], got {self.replace_rate}")
        if not self.target_modules:
            raise ValueError("SpielConfig.target_modules is empty")

    def to_dict(self) -> dict:
        return {"peft_type": "SPIEL", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> SpielConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"peft_type", "target_shapes"})
        if unknown:
            raise ValueError(f"unknown SpielConfig keys: {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, directory: str | Path, **extra) -> None:
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps({**self.to_dict(), **extra}, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> tuple[SpielConfig, dict]:
        """The config and the raw JSON (which also records the target shapes)."""
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no SpIEL adapter at {directory}: {CONFIG_NAME} is missing")
        data = json.loads(path.read_text())
        if data.get("peft_type") != "SPIEL":
            raise ValueError(f"{path} is not a SpIEL adapter (peft_type={data.get('peft_type')!r})")
        return cls.from_dict(data), data
