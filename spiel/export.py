"""A SpIEL adapter as a peft LoRA adapter, for serving stacks that take only LoRA: Δ ≈ B·A by truncated SVD.

Each targeted layer's sparse Δ (out × in) is factorised as U_r Σ_r V_rᵀ, the best rank-r approximation in the
Frobenius norm (Eckart–Young); B = U_r Σ_r^½ and A = Σ_r^½ V_rᵀ, written with ``lora_alpha = r`` (scaling 1) under
peft's key names so that ``PeftModel.from_pretrained`` loads it. A sparse Δ is usually of high rank (that is
SpIEL's point), so the error is reported per layer and users choose r by it: ``python -m spiel export-lora``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from .identity import IDENTITY_FILE


def lora_factors(delta: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """(A, B) with B·A the best rank-``rank`` approximation of the dense ``delta`` (fp32)."""
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    root = s[:rank].sqrt()
    return root[:, None] * vh[:rank], u[:, :rank] * root[None, :]


def export_lora(adapter: str | Path, out: str | Path, rank: int) -> dict[str, float]:
    """Write ``out`` (a peft LoRA adapter at ``rank``) from the SpIEL adapter folder ``adapter``; returns each
    layer's relative Frobenius error ‖Δ − B·A‖ / ‖Δ‖ (also written to ``out/export.json``)."""
    from peft import LoraConfig
    from safetensors.torch import load_file

    from .tuner import SpielConfig, storage
    from .tuner.delta import SparseDelta, index_dtype
    from .tuner.model import WEIGHTS_NAME

    config, raw = SpielConfig.load(adapter)
    shapes = {name: tuple(shape) for name, shape in raw["target_shapes"].items()}
    if not 1 <= rank <= min(min(s) for s in shapes.values()):
        raise ValueError(f"rank {rank}: must be between 1 and the smallest layer dimension")
    tensors = load_file(str(Path(adapter) / WEIGHTS_NAME))
    modules = storage.modules(tensors)
    if not modules:
        raise ValueError(f"{adapter}: the adapter holds no delta to export")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    factors, errors = {}, {}
    for name in modules:
        shape = shapes[name]
        indices, values, _ = storage.decode(name, tensors, index_dtype(shape[0] * shape[1]))
        dense = SparseDelta(shape, indices, values, values_dtype=values.dtype).to_dense(torch.float32)
        a, b = lora_factors(dense, rank)
        factors[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
        factors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
        norm = float(dense.norm())
        errors[name] = float((dense - b @ a).norm()) / norm if norm else 0.0
    save_file(factors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    LoraConfig(r=rank, lora_alpha=rank, target_modules=list(config.target_modules), lora_dropout=0.0,
               task_type="CAUSAL_LM").save_pretrained(str(out))
    identity = Path(adapter) / IDENTITY_FILE
    if identity.exists():
        (out / IDENTITY_FILE).write_text(identity.read_text())
    summary = {"source": str(adapter), "rank": rank, "relative_error": errors,
               "mean_relative_error": sum(errors.values()) / len(errors)}
    (out / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
    return errors
