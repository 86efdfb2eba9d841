"""CUDA paths (bf16 base, sampled ∂L/∂φ, NF4 qSpIEL); skipped where no GPU is present."""

import pytest
import torch
from conftest import tiny_llama

from spiel import SpielConfig, get_spiel_model, make_optimizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("grad_mode", ["dense", "sampled"])
def test_bf16_gradients_match_between_modes(grad_mode, batch):
    torch.manual_seed(0)
    model = tiny_llama().to("cuda", torch.bfloat16)
    spiel = get_spiel_model(model, SpielConfig(density=0.05, grad_mode=grad_mode))
    ids = batch.cuda()
    spiel(input_ids=ids, labels=ids).loss.backward()
    layer = spiel.spiel_layers()["model.layers.1.mlp.down_proj"]
    delta = layer.spiel_deltas["default"]
    assert delta.values.dtype == torch.float32 and delta.values.grad is not None
    assert torch.isfinite(delta.values.grad).all()


def test_nf4_training_step(tmp_path, batch):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    tiny_llama().save_pretrained(tmp_path)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = LlamaForCausalLM.from_pretrained(tmp_path, quantization_config=quant, device_map={"": 0})
    spiel = get_spiel_model(model, SpielConfig(density=0.05))
    delta = next(iter(spiel.deltas().values()))
    assert delta.values.dtype == torch.bfloat16
    optimizer = make_optimizer(spiel, 1e-2)
    ids = batch.cuda()
    first = spiel(input_ids=ids, labels=ids).loss
    first.backward()
    optimizer.step()
    assert spiel(input_ids=ids, labels=ids).loss.item() < first.item()
