"""AdamW for dense parameters stored in bf16 (FullIFT on a bf16 base, qLoRA's bf16 adapters; App. B, D).

An optimizer that updates bf16 weights in place loses every update below half a bf16 ulp: at FullIFT's learning
rate of 2e-5 that is most LLaMA weights (|w| ≳ 0.005), so the model barely moves. As mixed-precision training does
(the authors' FullIFT ran under DeepSpeed, which keeps fp32 masters), :class:`MasterWeights` keeps an fp32 copy of
each bf16 parameter, lets the optimizer update the copies and writes them back rounded to bf16 after every step.
The model keeps computing and storing bf16 weights.

The optimizer over the copies is bitsandbytes' paged 32-bit AdamW on CUDA (App. D: FullIFT at 7b fits one A100
"with activation checkpointing and paged optimization"; the authors' qLoRA uses the same optimizer) and
``torch.optim.AdamW`` elsewhere, with the same update rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import torch
from torch import Tensor, nn


def adamw(params: list[Tensor], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Paged 32-bit AdamW (bitsandbytes) for CUDA parameters when bitsandbytes is installed, else torch's AdamW."""
    if params and params[0].is_cuda:
        try:
            from bitsandbytes.optim import PagedAdamW32bit
        except ImportError:
            pass
        else:
            return PagedAdamW32bit(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class MasterWeights:
    """fp32 copies of a model's low-precision trainable parameters, which the optimizer updates.

    Each backward pass adds a parameter's gradient into its copy's fp32 gradient as soon as it is computed and frees
    the low-precision one (so the micro-batches of a step accumulate in fp32, and no bf16 gradient is held);
    ``after_step`` rounds the updated copies back into the parameters. fp32 parameters need no copy and are
    optimized directly.
    """

    def __init__(self, params: Iterable[nn.Parameter]) -> None:
        self.pairs: list[tuple[nn.Parameter, Tensor]] = []
        self.optimized: list[Tensor] = []
        for param in params:
            if param.dtype == torch.float32:
                self.optimized.append(param)
                continue
            master = param.detach().float().clone().requires_grad_(True)
            param.register_post_accumulate_grad_hook(partial(_accumulate_into, master))
            self.pairs.append((param, master))
            self.optimized.append(master)

    @torch.no_grad()
    def after_step(self) -> None:
        for param, master in self.pairs:
            param.copy_(master)

    def state_dict(self) -> list[Tensor]:
        """The masters themselves, not copies (27 GB at 7b): for a checkpoint that is written at once."""
        return [master.detach() for _, master in self.pairs]

    @torch.no_grad()
    def load_state_dict(self, masters: list[Tensor]) -> None:
        if len(masters) != len(self.pairs):
            raise ValueError(f"checkpoint has {len(masters)} master weights, this model {len(self.pairs)}")
        for (param, master), saved in zip(self.pairs, masters, strict=True):
            master.copy_(saved)
            param.copy_(saved)


@torch.no_grad()
def _accumulate_into(master: Tensor, param: nn.Parameter) -> None:
    if master.grad is None:
        master.grad = param.grad.float()
    else:
        master.grad.add_(param.grad)
    param.grad = None


def master_adamw(params: Iterable[nn.Parameter], lr: float, weight_decay: float
                 ) -> tuple[torch.optim.Optimizer, MasterWeights]:
    """AdamW (see :func:`adamw`) over fp32 masters of ``params``: the optimizer and the masters it updates."""
    masters = MasterWeights(params)
    return adamw(masters.optimized, lr, weight_decay), masters
