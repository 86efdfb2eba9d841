"""The drop-and-grow loop around the optimizer (Algorithms 1 and 2).

Call :meth:`Reselector.step` after every optimizer step. η is updated after steps t = kS + γ ≤ T;
for SpIEL-AG the γ steps before each update form the gradient-estimation phase, during which every
targeted layer hands its weight gradient to a :class:`GradientEstimator`.
"""

from __future__ import annotations

import torch

from .growth import GradientEstimator, grow_ag, grow_ma
from .model import SpielModel
from .optim import SparseAdamW, SparseSM3, _SparseOptimizer
from .schedule import num_to_replace, replace_fraction, update_steps


def make_optimizer(model: SpielModel, lr: float, weight_decay: float = 0.0,
                   adapter_name: str | None = None) -> _SparseOptimizer:
    """SparseAdamW for SpIEL-AG, SparseSM3 for SpIEL-MA, over the adapter's values."""
    adapter_name = adapter_name or model.active_adapters[0]
    deltas = list(model.deltas(adapter_name).values())
    if model.peft_config[adapter_name].growth == "ag":
        return SparseAdamW(deltas, lr=lr, weight_decay=weight_decay)
    return SparseSM3(deltas, lr=lr, weight_decay=weight_decay)


class Reselector:
    """Counts optimizer steps, runs estimation phases and applies each η update."""

    def __init__(self, model: SpielModel, optimizer: _SparseOptimizer, total_steps: int,
                 adapter_name: str | None = None) -> None:
        self.adapter_name = adapter_name or model.active_adapters[0]
        self.config = model.peft_config[self.adapter_name]
        self.layers = {n: layer for n, layer in model.spiel_layers().items()
                       if self.adapter_name in layer.spiel_deltas}
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.updates = set(update_steps(total_steps, self.config.update_interval, self.config.estimation_steps))
        self.step_count = 0
        self.estimators: dict[str, GradientEstimator] = {}
        self.history: list[dict] = []
        self._maybe_open_phase()

    @property
    def first_update(self) -> int | None:
        return self.config.estimation_steps if self.config.replace_all_first else None

    def step(self) -> None:
        for estimator in self.estimators.values():
            estimator.end_step()
        self.step_count += 1
        if self.step_count in self.updates:
            self._update()
        self._maybe_open_phase()

    def abandon_step(self) -> None:
        """Undo what the backward passes of an unfinished optimizer step contributed (see ``GradientEstimator``)."""
        for estimator in self.estimators.values():
            estimator.abandon_step()

    def _maybe_open_phase(self) -> None:
        if self.config.growth == "ag" and self.step_count + self.config.estimation_steps in self.updates:
            sampled = self.config.grad_mode == "sampled"
            for name, layer in self.layers.items():
                self.estimators[name] = GradientEstimator(len(layer.spiel_deltas[self.adapter_name]), sampled)
                layer.observer = self.estimators[name]

    @torch.no_grad()
    def _update(self) -> None:
        t = self.step_count
        fraction = replace_fraction(t, self.total_steps, rate=self.config.replace_rate,
                                    schedule=self.config.schedule, first_update=self.first_update)
        replaced = total = 0
        for name, layer in self.layers.items():
            delta = layer.spiel_deltas[self.adapter_name]
            n = num_to_replace(len(delta), fraction)
            if self.config.growth == "ag":
                layer.observer = None
                estimator = self.estimators.pop(name)
                result = grow_ag(delta, self.optimizer, estimator, n, t) if n else None
            else:
                result = grow_ma(delta, self.optimizer, n, t) if n else None
            replaced += 0 if result is None else result.grown.numel()
            total += len(delta)
            delta.values.grad = None
        self.history.append({"step": t, "fraction": fraction, "replaced": replaced, "entries": total})

    # -- exact resume -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "history": list(self.history),
                "estimators": {n: vars(e).copy() for n, e in self.estimators.items()}}

    def load_state_dict(self, state: dict) -> None:
        for layer in self.layers.values():
            layer.observer = None
        self.step_count = state["step_count"]
        self.history = list(state["history"])
        self.estimators = {}
        for name, fields in state["estimators"].items():
            estimator = GradientEstimator(fields["num_candidates"], fields["sampled"])
            device = self.layers[name].spiel_deltas[self.adapter_name].values.device  # a checkpoint read on the CPU
            estimator.__dict__.update({k: v.to(device, copy=True) if torch.is_tensor(v) else v
                                       for k, v in fields.items()})
            self.estimators[name] = estimator
            self.layers[name].observer = estimator
