"""The methods of Tables 1–3 in one registry: how each wraps a base model and what it optimises.

Baselines come from ``peft`` (LoRA, qLoRA, (IA)3); 4-bit bases from ``transformers``' BitsAndBytesConfig
(NF4, double quantization); SpIEL from ``spiel.tuner``. Settings the paper fixes (App. B–D): LoRA
α = 16, dropout 0.1, every linear layer of the transformer blocks; (IA)3 on k, v and down projections.

Beyond the paper, static sparse baselines at the same budget: peft's SHiRA (a fixed random mask, r·(in + out)
entries per layer, LoRA's count layer by layer; peft's ``random_mask`` seeds a new generator per layer, so layers
of one shape share one pattern), peft's Super-Tuning (a fixed support of the largest-magnitude
weights, at the one sparsity that gives LoRA's count over the targeted layers, as SpIEL's budget does, §3.2) and
SpIEL-fixed (SpIEL's random initial η, never reselected: drop-and-grow switched off).
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
    """"none", "full", "lora", "ia3", "shira", "supertuning", "spiel" or "spiel-fixed" (η never reselected)."""
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
    Method("shira", "SHiRA", "shira"),
    Method("supertuning", "Super-Tuning", "supertuning"),
    Method("spiel-fixed", "SpIEL-fixed", "spiel-fixed", growth="ag"),  # AG's optimizer (AdamW), no reselection
)}


EXTENSION = ("shira", "supertuning", "spiel-fixed")
"""The static sparse baselines beyond the paper (config ``static_sparse``: Table 1x, Tables 3–4, the audit)."""


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
RESELECTION_KNOBS = ("update_interval", "estimation_steps", "replace_rate", "schedule", "replace_all_first")
"""SpIEL's knobs of drop-and-grow, which SpIEL-fixed does not take."""
HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "full": _SHARED, "ia3": _SHARED, "lora": {**_SHARED, **_TARGETED}, "shira": {**_SHARED, **_TARGETED},
    "supertuning": {**_SHARED, **_TARGETED}, "spiel": {**_SHARED, **_TARGETED, **SPIEL_KNOBS},
    "spiel-fixed": {**_SHARED, **_TARGETED, **{k: v for k, v in SPIEL_KNOBS.items() if k not in RESELECTION_KNOBS}}}
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
    if spec.kind in ("spiel", "spiel-fixed"):
        try:
            spiel_config(spec, typed, seed=0)
        except ValueError as error:
            raise OptionError(f"{where}: {error}") from None
    return typed


def same_hyperparameters(name: str, a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether ``a`` and ``b`` train method ``name`` alike: the same values once typed, a value left out read as
    its default (SpIEL's knobs: SpielConfig's; ``weight_decay``: 0; ``rank``: DEFAULT_RANK), so that a grid point
    or an ablation cell that repeats a table cell's training reuses it instead of training it again."""
    typed = [check_hyperparameters(name, hp) for hp in (a, b)]
    defaults = {"weight_decay": 0.0, "rank": DEFAULT_RANK}
    full = [{**defaults, **hp} for hp in typed]
    spec = method(name)
    if spec.kind in ("spiel", "spiel-fixed"):  # the knobs compared as the configuration they make
        full = [{**{k: v for k, v in hp.items() if k not in SPIEL_KNOBS}, "spiel": spiel_config(spec, hp, seed=0)}
                for hp in full]
    return full[0] == full[1]


def spiel_config(spec: Method, hp: dict[str, Any], seed: int) -> SpielConfig:
    """The SpIEL adapter configuration of checked hyperparameters ``hp`` (SpielConfig's defaults elsewhere)."""
    return SpielConfig(lora_rank=hp.get("rank", DEFAULT_RANK), growth=spec.growth, seed=seed,
                       target_modules=list(hp.get("target_modules", LLAMA_TARGETS)),
                       **{k: v for k, v in hp.items() if k in SPIEL_KNOBS})


def target_shapes(model: nn.Module, targets: list[str]) -> dict[str, tuple[int, int]]:
    """Module name → (out, in) of every linear layer whose last name component is in ``targets``."""
    from torch import nn

    return {name: (m.out_features, m.in_features) for name, m in model.named_modules()
            if name.rsplit(".", 1)[-1] in targets and isinstance(m, nn.Linear)}


def lora_equivalent_density(model: nn.Module, targets: list[str], rank: int) -> float:
    """The fraction of the targeted weights that LoRA at ``rank`` trains (App. D's budget, as SpIEL's density)."""
    from .tuner.budget import lora_parameters

    shapes = target_shapes(model, targets)
    if not shapes:
        raise ValueError(f"no linear layer of the model matches target_modules {targets}")
    density = lora_parameters(shapes, rank) / sum(o * i for o, i in shapes.values())
    if not 0 < density < 1:
        raise ValueError(f"rank {rank}: LoRA's count is {density:.3g} of the targeted weights; it must be below 1")
    return density


def trainable_parameters(model: nn.Module) -> int:
    """The number of trainable scalars of a wrapped model (SpIEL's φ, a peft adapter's weights)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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
    if spec.kind in ("spiel", "spiel-fixed"):
        wrapped = get_spiel_model(model, spiel_config(spec, hp, seed))
        optimizer = make_optimizer(wrapped, lr=lr, weight_decay=weight_decay)
        reselector = Reselector(wrapped, optimizer, total_steps) if spec.kind == "spiel" else None
        return Trainable(wrapped, optimizer, reselector)
    from peft import IA3Config, LoraConfig, ShiraConfig, SupertuningConfig, get_peft_model

    rank = hp.get("rank", DEFAULT_RANK)
    if spec.kind == "lora":
        config = LoraConfig(r=rank, lora_alpha=16, lora_dropout=0.1, target_modules=targets, task_type="CAUSAL_LM")
    elif spec.kind == "shira":
        config = ShiraConfig(r=rank, random_seed=seed, target_modules=targets, task_type="CAUSAL_LM")
    elif spec.kind == "supertuning":
        config = SupertuningConfig(sparsity=1 - lora_equivalent_density(model, targets, rank),
                                   target_modules=targets, task_type="CAUSAL_LM")
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
