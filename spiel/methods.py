"""The methods of Tables 1–3 in one registry: how each wraps a base model and what it optimises.

Baselines come from ``peft`` (LoRA, qLoRA, (IA)3); 4-bit bases from ``transformers``' BitsAndBytesConfig
(NF4, double quantization); SpIEL from ``spiel.tuner``. Settings the paper fixes (App. B–D): LoRA
α = 16, dropout 0.1, every linear layer of the transformer blocks; (IA)3 on k, v and down projections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .options import OptionError, checked, field_types
from .tuner.config import LLAMA_TARGETS, SpielConfig

if TYPE_CHECKING:  # the registry and the checks load no torch (the workflow reads them); wrapping does
    import torch
    from torch import nn

    from .master_weights import MasterWeights
    from .tuner import Reselector


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    """The paper's row label."""
    kind: str
    """"none", "full", "lora", "ia3" or "spiel"."""
    quantized: bool = False
    growth: str | None = None


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("original", "Original", "none"),
    Method("original-4bit", "Original (4-bit)", "none", quantized=True),
    Method("full", "FullIFT", "full"),
    Method("ia3", "(IA)3", "ia3"),
    Method("lora", "LoRA", "lora"),
    Method("qlora", "qLoRA", "lora", quantized=True),
    Method("spiel-ag", "SpIEL-AG", "spiel", growth="ag"),
    Method("spiel-ma", "SpIEL-MA", "spiel", growth="ma"),
    Method("qspiel-ag", "qSpIEL-AG", "spiel", quantized=True, growth="ag"),
    Method("qspiel-ma", "qSpIEL-MA", "spiel", quantized=True, growth="ma"),
)}


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


@dataclass
class Trainable:
    """A wrapped model with its optimizer and, for SpIEL, the drop-and-grow driver."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    reselector: Reselector | None = None
    masters: MasterWeights | None = None
    """fp32 copies of bf16 trainable parameters, which the optimizer updates (FullIFT, qLoRA)."""

    def step(self) -> None:
        """Apply the accumulated gradients (:meth:`update`), then drop-and-grow."""
        self.update()
        if self.reselector is not None:
            self.reselector.step()

    def update(self) -> None:
        """Optimizer step on the accumulated gradients (on the fp32 masters, if any, rounded back into the
        parameters)."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.masters is not None:
            self.masters.after_step()

    def abandon_step(self) -> None:
        """Drop the gradients of an optimizer step that will not be completed, and what drop-and-grow gathered
        from them, so that the state is the last completed step's (a checkpoint written now resumes exactly)."""
        self.model.zero_grad(set_to_none=True)
        self.optimizer.zero_grad(set_to_none=True)
        if self.reselector is not None:
            self.reselector.abandon_step()

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes in training (trainable tensors, SpIEL indices, optimizer, selector); a parameter
        with an fp32 master is saved as its master only."""
        mastered = {id(p) for p, _ in self.masters.pairs} if self.masters is not None else set()
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in mastered}
        tensors = {k: v.detach().clone() for k, v in self.model.state_dict().items()
                   if k in trainable or k.endswith((".indices", ".grown_at"))}
        state = {"tensors": tensors, "optimizer": self.optimizer.state_dict()}
        if self.masters is not None:
            state["masters"] = self.masters.state_dict()
        if self.reselector is not None:
            state["reselector"] = self.reselector.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(state["tensors"]) - set(self.model.state_dict())
        if missing:
            raise ValueError(f"checkpoint does not fit this model: {sorted(missing)[:3]} …")
        self.model.load_state_dict(state["tensors"], strict=False)
        if self.masters is not None:
            self.masters.load_state_dict(state["masters"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.reselector is not None:
            self.reselector.load_state_dict(state["reselector"])


_SHARED = {"lr": float, "weight_decay": float}
_TARGETED = {"rank": int, "target_modules": list[str]}
SPIEL_KNOBS = {k: v for k, v in field_types(SpielConfig).items()
               if k not in ("growth", "target_modules", "density", "num_deltas", "lora_rank", "seed")}
"""SpIEL's knobs a run may set as hyperparameters (S, γ, ξ, schedule, …); the budget comes from ``rank``."""
HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "full": _SHARED, "ia3": _SHARED, "lora": {**_SHARED, **_TARGETED}, "spiel": {**_SHARED, **_TARGETED, **SPIEL_KNOBS}}
"""Method kind → the hyperparameters it takes and their types (anything else is refused, not ignored)."""
DEFAULT_RANK = 64
"""LoRA's rank r, and SpIEL's budget as LoRA's parameter count at r, where a run names none (App. D)."""


def check_hyperparameters(name: str, hp: dict[str, Any], where: str = "--hp") -> dict[str, Any]:
    """``hp`` converted to the types method ``name`` takes; an unknown, inapplicable or impossible value is a
    one-line :class:`OptionError` naming the key and what is valid."""
    spec = method(name)
    if spec.kind == "none":
        if hp:
            raise OptionError(f"{where}: {name} is not trained and takes no hyperparameters, got {sorted(hp)}")
        return {}
    valid = HYPERPARAMETERS[spec.kind]
    inapplicable = sorted(set(hp) - set(valid))
    if inapplicable:
        raise OptionError(f"{where}: {inapplicable} not hyperparameter(s) of {name}; valid: {sorted(valid)}")
    typed = checked(hp, valid, where)
    if "lr" not in typed:
        raise OptionError(f"{where}: {name} needs a learning rate (lr=VALUE; hyperparameters.{name}.lr in a config)")
    lr, decay = typed["lr"], typed.get("weight_decay", 0.0)
    if lr <= 0:
        raise OptionError(f"{where} lr={lr}: the learning rate must be positive")
    if not 0 <= decay * lr < 1:
        raise OptionError(f"{where} weight_decay={decay}: must be >= 0 with lr × weight_decay < 1 (lr={lr})")
    if typed.get("rank", 1) < 1:
        raise OptionError(f"{where} rank={typed['rank']}: must be a positive integer")
    if spec.kind == "spiel":
        try:
            spiel_config(spec, typed, seed=0)
        except ValueError as error:
            raise OptionError(f"{where}: {error}") from None
    return typed


def spiel_config(spec: Method, hp: dict[str, Any], seed: int) -> SpielConfig:
    """The SpIEL adapter configuration of checked hyperparameters ``hp`` (SpielConfig's defaults elsewhere)."""
    return SpielConfig(lora_rank=hp.get("rank", DEFAULT_RANK), growth=spec.growth, seed=seed,
                       target_modules=list(hp.get("target_modules", LLAMA_TARGETS)),
                       **{k: v for k, v in hp.items() if k in SPIEL_KNOBS})


def wrap(name: str, model: nn.Module, hp: dict[str, Any], total_steps: int, seed: int = 0) -> Trainable:
    """Wrap ``model`` for method ``name`` with hyperparameters ``hp`` (lr, rank, weight_decay, S, …; checked by
    :func:`check_hyperparameters`); ``seed`` draws SpIEL's initial indices."""
    import torch

    from .master_weights import master_adamw
    from .tuner import Reselector, get_spiel_model, make_optimizer

    spec = method(name)
    if spec.kind == "none":
        raise ValueError(f"{name} is not trained")
    hp = check_hyperparameters(name, hp)
    lr, weight_decay = hp["lr"], hp.get("weight_decay", 0.0)
    targets = list(hp.get("target_modules", LLAMA_TARGETS))
    if spec.kind == "full":
        optimizer, masters = master_adamw(model.parameters(), lr, weight_decay)
        return Trainable(model, optimizer, masters=masters)
    if spec.kind == "spiel":
        wrapped = get_spiel_model(model, spiel_config(spec, hp, seed))
        optimizer = make_optimizer(wrapped, lr=lr, weight_decay=weight_decay)
        return Trainable(wrapped, optimizer, Reselector(wrapped, optimizer, total_steps))
    from peft import IA3Config, LoraConfig, get_peft_model

    if spec.kind == "lora":
        config = LoraConfig(r=hp.get("rank", DEFAULT_RANK), lora_alpha=16, lora_dropout=0.1, target_modules=targets,
                            task_type="CAUSAL_LM")
    else:
        config = IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"],
                           task_type="CAUSAL_LM")
    # On a 4-bit base the adapter is stored in bf16 (App. B; the authors cast every lora_ parameter), updated
    # through fp32 masters by paged AdamW on CUDA (the authors' qLoRA optimizer); otherwise fp32 and AdamW.
    wrapped = get_peft_model(model, config, autocast_adapter_dtype=not spec.quantized)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    if not spec.quantized:
        return Trainable(wrapped, torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay))
    for param in params:
        param.data = param.data.to(torch.bfloat16)
    optimizer, masters = master_adamw(params, lr, weight_decay)
    return Trainable(wrapped, optimizer, masters=masters)
