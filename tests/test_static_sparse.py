"""Static sparse baselines at SpIEL's budget (issue 21): peft's SHiRA and Super-Tuning, and SpIEL-fixed."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

from spiel.adapters import apply_adapters
from spiel.identity import base_identity, save_base_identity
from spiel.methods import check_hyperparameters, trainable_parameters, wrap
from spiel.options import OptionError
from spiel.tuner.budget import lora_parameters

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def wider_llama(seed: int = 0):
    """A Llama large enough that the per-layer rounding of a density budget is far below 0.1 % of the count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("name", ["shira", "supertuning", "spiel-fixed", "spiel-ag", "spiel-ma"])
def test_every_sparse_method_trains_loras_parameter_count(name):
    model = wider_llama()
    shapes = {n: (m.out_features, m.in_features) for n, m in model.named_modules()
              if n.rsplit(".", 1)[-1] in TARGETS}
    lora = wrap("lora", wider_llama(), {"lr": 1e-3, "rank": 4}, total_steps=4)
    expected = 2 * (128 + 128 + 2 * (64 + 128) + 128 + 128 + 3 * (128 + 352)) * 4  # 2 layers × Σ (in + out) × r
    assert trainable_parameters(lora.model) == lora_parameters(shapes, 4) == expected
    count = trainable_parameters(wrap(name, model, {"lr": 1e-3, "rank": 4}, total_steps=4).model)
    print(f"{name}: {count} trainable parameters, LoRA r=4: {expected}")
    assert abs(count - expected) <= 0.001 * expected


def _step(trainable, batch):
    trainable.model(input_ids=batch, labels=batch).loss.backward()
    trainable.step()


def _indices(model) -> dict[str, torch.Tensor]:
    return {n: d.indices.clone() for n, d in model.deltas().items()}


def test_spiel_fixed_never_reselects_while_spiel_ag_does(batch):
    fixed = wrap("spiel-fixed", tiny_llama(), {"lr": 1e-2, "rank": 2}, total_steps=12, seed=3)
    ag = wrap("spiel-ag", tiny_llama(), {"lr": 1e-2, "rank": 2, "update_interval": 2, "estimation_steps": 1},
              total_steps=12, seed=3)
    start = {"fixed": _indices(fixed.model), "ag": _indices(ag.model)}
    assert all(torch.equal(start["fixed"][n], start["ag"][n]) for n in start["fixed"])  # the same initial η
    values = torch.cat([d.values.detach().clone() for d in fixed.model.deltas().values()])
    for _ in range(12):
        _step(fixed, batch)
        _step(ag, batch)
    assert all(torch.equal(start["fixed"][n], i) for n, i in _indices(fixed.model).items())
    assert not torch.equal(values, torch.cat([d.values.detach() for d in fixed.model.deltas().values()]))
    assert any(not torch.equal(start["ag"][n], i) for n, i in _indices(ag.model).items())


def test_spiel_fixed_refuses_drop_and_grow_knobs():
    with pytest.raises(OptionError, match=r"\['update_interval'\] not hyperparameter\(s\) of spiel-fixed"):
        check_hyperparameters("spiel-fixed", {"lr": 1e-3, "update_interval": 4})


def _trained(name: str, batch, seed: int, tmp_path):
    """An adapter of ``name`` after 3 steps, saved beside its base model's identity; (folder, wrapped model)."""
    trainable = wrap(name, tiny_llama(), {"lr": 1e-2, "rank": 2}, total_steps=3, seed=seed)
    for _ in range(3):
        _step(trainable, batch)
    folder = tmp_path / f"{name}-{seed}"
    trainable.model.save_pretrained(folder)
    save_base_identity(base_identity(tiny_llama()), folder)
    return folder, trainable.model.eval()


@pytest.mark.parametrize("name", ["shira", "supertuning"])
def test_static_adapter_save_load_gives_identical_outputs(name, batch, tmp_path):
    folder, trained = _trained(name, batch, seed=1, tmp_path=tmp_path)
    with torch.no_grad():
        expected = trained(input_ids=batch).logits
        base = tiny_llama()(input_ids=batch).logits
        assert not torch.allclose(expected, base)  # the adapter changes the model
        unmerged = apply_adapters(tiny_llama(), [folder], merge=False)(input_ids=batch).logits
        merged = apply_adapters(tiny_llama(), [folder])(input_ids=batch).logits
    assert torch.equal(unmerged, expected)
    torch.testing.assert_close(merged, expected, rtol=0, atol=1e-5)  # merging rounds W + ΔW once


@pytest.mark.parametrize("name", ["shira", "supertuning"])
def test_static_adapters_compose_as_the_sum_of_their_deltas(name, batch, tmp_path):
    first, _ = _trained(name, batch, seed=1, tmp_path=tmp_path)
    second, _ = _trained(name, batch[:, :6], seed=2, tmp_path=tmp_path)
    deltas = []
    for folder in (first, second):
        merged = apply_adapters(tiny_llama(), [folder])
        deltas.append({k: v - tiny_llama().state_dict()[k] for k, v in merged.state_dict().items()})
    composed = apply_adapters(tiny_llama(), [first, second]).state_dict()
    base = tiny_llama().state_dict()
    changed = [k for k in base if deltas[0][k].abs().max() > 0]
    assert changed and all(k.endswith("proj.weight") for k in changed)
    for key, weight in base.items():
        torch.testing.assert_close(composed[key], weight + deltas[0][key] + deltas[1][key], rtol=0, atol=1e-6)
