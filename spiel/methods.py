"""The methods of Tables 1–3 in one registry: how each wraps a base model and what it optimises.

Baselines come from ``peft`` (LoRA, qLoRA, (IA)3); 4-bit bases from ``transformers``' BitsAndBytesConfig
(NF4, double quantization); SpIEL from ``spiel.tuner``. Settings the paper fixes (App. B–D): LoRA
α = 16, dropout 0.1, every linear layer of the transformer blocks; (IA)3 on k, v and down projections.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from .master_weights import MasterWeights, master_adamw
from .tuner import Reselector, SpielConfig, get_spiel_model, make_optimizer
from .tuner.config import LLAMA_TARGETS


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
        """Apply the accumulated gradients: optimizer step (on the fp32 masters, if any, rounded back into the
        parameters), then drop-and-grow."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.masters is not None:
            self.masters.after_step()
        if self.reselector is not None:
            self.reselector.step()

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


def wrap(name: str, model: nn.Module, hp: dict[str, Any], total_steps: int) -> Trainable:
    """Wrap ``model`` for method ``name`` with hyperparameters ``hp`` (lr, rank, weight_decay, S, …)."""
    spec = method(name)
    lr = float(hp["lr"])
    targets = list(hp.get("target_modules", LLAMA_TARGETS))
    if spec.kind == "none":
        raise ValueError(f"{name} is not trained")
    if spec.kind == "full":
        optimizer, masters = master_adamw(model.parameters(), lr, float(hp.get("weight_decay", 0.0)))
        return Trainable(model, optimizer, masters=masters)
    if spec.kind == "spiel":
        # SpielConfig holds SpIEL's defaults (App. C); hp overrides those it names, as the default's type
        knobs = {f.name: type(f.default) for f in fields(SpielConfig)
                 if f.name not in ("growth", "target_modules") and f.default is not None}
        config = SpielConfig(lora_rank=int(hp.get("rank", 64)), growth=spec.growth, target_modules=targets,
                             **{k: knobs[k](v) for k, v in hp.items() if k in knobs})
        wrapped = get_spiel_model(model, config)
        optimizer = make_optimizer(wrapped, lr=lr, weight_decay=float(hp.get("weight_decay", 0.0)))
        return Trainable(wrapped, optimizer, Reselector(wrapped, optimizer, total_steps))
    from peft import IA3Config, LoraConfig, get_peft_model

    if spec.kind == "lora":
        config = LoraConfig(r=int(hp.get("rank", 64)), lora_alpha=16, lora_dropout=0.1, target_modules=targets,
                            task_type="CAUSAL_LM")
    else:
        config = IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"],
                           task_type="CAUSAL_LM")
    # On a 4-bit base the adapter is stored in bf16 (App. B; the authors cast every lora_ parameter), updated
    # through fp32 masters by paged AdamW on CUDA (the authors' qLoRA optimizer); otherwise fp32 and AdamW.
    wrapped = get_peft_model(model, config, autocast_adapter_dtype=not spec.quantized)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    weight_decay = float(hp.get("weight_decay", 0.0))
    if not spec.quantized:
        return Trainable(wrapped, torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay))
    for param in params:
        param.data = param.data.to(torch.bfloat16)
    optimizer, masters = master_adamw(params, lr, weight_decay)
    return Trainable(wrapped, optimizer, masters=masters)

