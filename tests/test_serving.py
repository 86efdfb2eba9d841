"""Serving many sparse adapters (issue 22): a mixed batch equals each adapter merged alone; unmerge is exact."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

from spiel.tuner import SpielConfig, SpielModel, get_spiel_model


def _with_adapters(count: int) -> SpielModel:
    """The tiny Llama with ``count`` SpIEL adapters of random η and φ (a0, a1, …)."""
    model = get_spiel_model(tiny_llama(), SpielConfig(density=0.05, seed=0), "a0")
    for i in range(1, count):
        model.add_adapter(f"a{i}", SpielConfig(density=0.05, seed=i))
    generator = torch.Generator().manual_seed(0)
    for layer in model.spiel_layers().values():
        for delta in layer.spiel_deltas.values():
            delta.values.data = 0.05 * torch.randn(len(delta), generator=generator)
    return model.eval()


def test_a_mixed_batch_equals_each_adapter_merged_alone(batch):
    model = _with_adapters(3)
    names = ["a2", None, "a0", "a2", "a1", "a0"]
    ids = batch.repeat(3, 1)  # 6 rows
    with model.adapter_per_row(names):
        mixed = model(input_ids=ids).logits
    for i, name in enumerate(names):
        with torch.no_grad():
            if name is None:
                with model.disable_adapter():
                    alone = model(input_ids=ids[i:i + 1]).logits
            else:
                model.set_adapter(name)
                model.merge_adapter([name])
                model.set_adapter([])
                alone = model(input_ids=ids[i:i + 1]).logits
                model.unmerge_adapter()
        # x·(W + Δ) merged vs x·W + x·Δ applied: the same up to fp32 rounding of the two orders of summation
        torch.testing.assert_close(mixed[i:i + 1], alone, rtol=0, atol=2e-5)
    assert not torch.allclose(mixed[0], mixed[2], atol=1e-3)  # different adapters, different outputs


def test_unmerge_restores_the_base_weights_bit_for_bit():
    model = _with_adapters(2)
    before = {k: v.clone() for k, v in model.base_model.state_dict().items() if k.endswith("base_layer.weight")}
    for _ in range(3):  # hot-swap a0 → a1 → a0 …
        for name in ("a0", "a1"):
            model.merge_adapter([name])
            model.unmerge_adapter()
    after = model.base_model.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())


def test_a_mixed_batch_refuses_unknown_or_merged_adapters():
    model = _with_adapters(1)
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['b'\]"), model.adapter_per_row(["b"]):
        pass
    model.merge_adapter(["a0"])
    with pytest.raises(ValueError, match="unmerge"), model.adapter_per_row(["a0"]):
        pass


def test_lora_export_error_falls_with_rank_and_loads_in_peft(tmp_path, batch):
    from peft import PeftModel

    from spiel.export import export_lora
    from spiel.identity import base_identity, save_base_identity

    model = _with_adapters(1)
    model.save_pretrained(tmp_path / "spiel")
    save_base_identity(base_identity(tiny_llama()), tmp_path / "spiel")
    with torch.no_grad():
        expected = model(input_ids=batch).logits
    mean_errors, logit_errors = [], []
    for rank in (1, 4, 16):
        errors = export_lora(tmp_path / "spiel", tmp_path / f"lora-{rank}", rank)
        mean_errors.append(sum(errors.values()) / len(errors))
        lora = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / f"lora-{rank}")).eval()
        with torch.no_grad():
            logit_errors.append(float((lora(input_ids=batch).logits - expected).norm() / expected.norm()))
        # the exported factors are what peft applies: W + B·A (scaling 1) for one layer, checked against Δ
        layer = lora.base_model.model.model.layers[0].self_attn.k_proj
        delta = model.deltas()["model.layers.0.self_attn.k_proj"].to_dense()
        product = layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        relative = float((delta - product).norm() / delta.norm())
        assert abs(relative - errors["model.layers.0.self_attn.k_proj"]) < 1e-5
    assert mean_errors[0] > mean_errors[1] > mean_errors[2] and logit_errors[0] > logit_errors[1] > logit_errors[2]
    assert errors["model.layers.0.self_attn.k_proj"] < 1e-5  # rank 16 is the k projection's full rank (16 × 32)


def test_a_mixed_batch_runs_on_a_bf16_base(batch):
    """CPU sparse kernels have no bf16: the update is computed in fp32 there and added in bf16."""
    model = _with_adapters(2)
    model.base_model.to(torch.bfloat16)
    with model.adapter_per_row(["a1", "a0"]):
        mixed = model(input_ids=batch).logits
    model.set_adapter("a1")
    with torch.no_grad():
        alone = model(input_ids=batch[:1]).logits
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed[:1].float(), alone.float(), rtol=0, atol=0.1)  # bf16's rounding
