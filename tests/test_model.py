"""SpielModel on a tiny Llama: budget, persistence, merging, composition, bad input, training loop."""

import pytest
import torch
from conftest import tiny_llama

from spiel import Reselector, SpielConfig, SpielModel, get_spiel_model, make_optimizer
from spiel.tuner.budget import entries_per_tensor, lora_parameters
from spiel.tuner.layers import SpielLinear

LLAMA2_7B = {**{f"l0.{p}": (4096, 4096) for p in ("q", "k", "v", "o")},
             "l0.gate": (11008, 4096), "l0.up": (11008, 4096), "l0.down": (4096, 11008)}


def test_lora_rank_budget_matches_paper():
    # 2,498,560 LoRA parameters per rank over the 32 layers of LLaMA-2 7b (App. D: r = 64 ↔ 2.3 %)
    assert lora_parameters(LLAMA2_7B, 1) * 32 == 2_498_560
    counts = entries_per_tensor(SpielConfig(lora_rank=64), LLAMA2_7B)
    assert abs(sum(counts.values()) - 64 * 78_080) <= len(counts)
    assert abs(sum(counts.values()) * 32 / 6.74e9 - 0.023) < 0.002
    densities = {n: counts[n] / (o * i) for n, (o, i) in LLAMA2_7B.items()}
    assert max(densities.values()) - min(densities.values()) < 1e-6


@pytest.mark.parametrize("kwargs,match", [
    (dict(density=0.0), "density"), (dict(density=1.5), "density"),
    (dict(density=0.1, lora_rank=4), "exactly one"), (dict(), "exactly one"),
    (dict(density=0.1, growth="xx"), "growth"), (dict(density=0.1, update_interval=3), "estimation_steps"),
])
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpielConfig(**kwargs)


def test_budget_too_small_or_no_target_is_rejected(llama):
    with pytest.raises(ValueError, match="no entry"):
        get_spiel_model(llama, SpielConfig(num_deltas=3))
    with pytest.raises(ValueError, match="no linear layer"):
        get_spiel_model(tiny_llama(), SpielConfig(density=0.1, target_modules=["nonexistent"]))


def test_every_block_linear_is_wrapped_with_equal_density(llama):
    model = get_spiel_model(llama, SpielConfig(density=0.05))
    layers = model.spiel_layers()
    assert len(layers) == 2 * 7
    for layer in layers.values():
        delta = layer.spiel_deltas["default"]
        assert abs(len(delta) / delta.numel - 0.05) < 1 / delta.numel
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".spiel_deltas.default.values" in n for n in trainable)


def _randomise(model, name="default", seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for d in model.deltas(name).values():
            d.values.copy_(torch.randn(len(d), generator=g) * 0.1)


def test_save_load_bit_identical(tmp_path, llama, batch):
    model = get_spiel_model(llama, SpielConfig(lora_rank=2))
    _randomise(model)
    out = model(input_ids=batch).logits
    model.save_pretrained(tmp_path)
    loaded = SpielModel.from_pretrained(tiny_llama(), tmp_path)
    for name, d in model.deltas().items():
        e = loaded.deltas()[name]
        assert torch.equal(d.indices, e.indices) and torch.equal(d.values, e.values)
        assert torch.equal(d.grown_at, e.grown_at)
    assert torch.equal(loaded(input_ids=batch).logits, out)


def test_load_onto_other_shape_is_rejected(tmp_path, llama):
    model = get_spiel_model(llama, SpielConfig(lora_rank=2))
    model.save_pretrained(tmp_path)
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ValueError, match="shape"):
        SpielModel.from_pretrained(other, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        SpielModel.from_pretrained(tiny_llama(), tmp_path / "missing")


def test_merge_unmerge_and_merge_and_unload(llama, batch):
    base = {n: p.detach().clone() for n, p in llama.named_parameters()}
    model = get_spiel_model(llama, SpielConfig(density=0.1))
    _randomise(model)
    with torch.no_grad():
        adapter_out = model(input_ids=batch).logits
        model.merge_adapter()
        merged_out = model(input_ids=batch).logits
        assert torch.allclose(merged_out, adapter_out, atol=1e-5)
        model.unmerge_adapter()
        for name, p in model.base_model.named_parameters():
            if "base_layer" in name:
                assert torch.equal(p, base[name.replace(".base_layer", "")]), name
        plain = model.merge_and_unload()
    assert not any(isinstance(m, SpielLinear) for m in plain.modules())
    assert torch.allclose(plain(input_ids=batch).logits, adapter_out, atol=1e-5)


def test_compose_equals_sum_and_switching_adapters(llama, batch):
    model = get_spiel_model(llama, SpielConfig(density=0.1, seed=1), adapter_name="a")
    model.add_adapter("b", SpielConfig(density=0.1, seed=2))
    _randomise(model, "a", 0)
    _randomise(model, "b", 1)
    with torch.no_grad():
        model.set_adapter(["a", "b"])
        both = model(input_ids=batch).logits
        model.compose(["a", "b"], "a+b")
        composed = model(input_ids=batch).logits
        model.set_adapter("a")
        only_a = model(input_ids=batch).logits
        with model.disable_adapter():
            original = model(input_ids=batch).logits
    assert torch.allclose(composed, both, atol=1e-5)
    assert not torch.allclose(only_a, both) and not torch.allclose(only_a, original)
    for name, d in model.deltas("a+b").items():
        expected = model.deltas("a")[name].to_dense() + model.deltas("b")[name].to_dense()
        assert torch.allclose(d.to_dense(), expected)


@pytest.mark.parametrize("growth", ["ag", "ma"])
def test_trainable_state_is_linear_in_d_phi(growth):
    sizes = []
    for rank in (1, 2, 4):
        model = get_spiel_model(tiny_llama(), SpielConfig(lora_rank=rank, growth=growth))
        opt = make_optimizer(model, 1e-3)
        for d in model.deltas().values():
            d.values.grad = torch.zeros_like(d.values)
        opt.step()
        sizes.append((model.num_entries(), model.trainable_state_bytes(opt)))
    per_tensor = sum(o + i for o, i in model.target_shapes().values())
    for n, size in sizes:
        # φ fp32 + η int32 + growth step int32, plus Adam's m, v, age (fp32) — or SM3's row/column accumulators
        expected = 24 * n if growth == "ag" else 12 * n + 4 * per_tensor
        assert size == expected


@pytest.mark.parametrize("growth,grad_mode", [("ag", "dense"), ("ag", "sampled"), ("ma", "sampled")])
def test_training_lowers_loss_and_updates_indices(growth, grad_mode, batch):
    model = get_spiel_model(tiny_llama(), SpielConfig(density=0.05, growth=growth, grad_mode=grad_mode,
                                                      update_interval=4, estimation_steps=2))
    opt = make_optimizer(model, 3e-2 if growth == "ma" else 1e-2)
    selector = Reselector(model, opt, total_steps=16)
    before = {n: d.indices.clone() for n, d in model.deltas().items()}
    losses = []
    for _ in range(16):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        selector.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    assert [h["step"] for h in selector.history] == [2, 6, 10, 14]
    assert selector.history[0]["replaced"] > 0.5 * selector.history[0]["entries"]
    assert any(not torch.equal(before[n], d.indices) for n, d in model.deltas().items())
    assert all(layer.observer is None for layer in model.spiel_layers().values())  # no phase past T


def test_estimation_phase_candidates_are_top_k_of_first_batch(batch):
    model = get_spiel_model(tiny_llama(), SpielConfig(density=0.05, update_interval=4, estimation_steps=2))
    opt = make_optimizer(model, 1e-2)
    selector = Reselector(model, opt, total_steps=8)
    layer = model.spiel_layers()["model.layers.0.mlp.down_proj"]
    delta = layer.spiel_deltas["default"]
    # dense reference: grad of the merged weight through plain autograd
    captured = {}
    weight = layer.base_weight(torch.float32) + delta.to_dense()
    weight.requires_grad_(True)
    original_forward = layer.forward
    layer.forward = lambda x: torch.nn.functional.linear(x, weight)
    model(input_ids=batch, labels=batch).loss.backward()
    captured["grad"] = weight.grad.reshape(-1).clone()
    layer.forward = original_forward
    opt.zero_grad()
    model(input_ids=batch, labels=batch).loss.backward()
    expected = torch.topk(captured["grad"].abs(), len(delta)).indices.sort().values
    assert selector.estimators["model.layers.0.mlp.down_proj"].candidates.tolist() == expected.tolist()


def test_resume_mid_phase_is_exact(batch):
    def run(stop_at=None, state=None):
        model = get_spiel_model(tiny_llama(), SpielConfig(density=0.05, update_interval=4, estimation_steps=2))
        opt = make_optimizer(model, 1e-2, weight_decay=0.1)
        selector = Reselector(model, opt, total_steps=12)
        start = 0
        if state is not None:
            model.base_model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            selector.load_state_dict(state["selector"])
            start = selector.step_count
        for step in range(start, 12):
            if step == stop_at:
                return {"model": {k: v.clone() for k, v in model.base_model.state_dict().items()},
                        "opt": opt.state_dict(), "selector": selector.state_dict()}
            model(input_ids=batch, labels=batch).loss.backward()
            opt.step()
            opt.zero_grad()
            selector.step()
        return model

    straight = run()
    resumed = run(state=run(stop_at=5))  # step 5 is inside the phase that ends at t = 6
    for name, d in straight.deltas().items():
        e = resumed.deltas()[name]
        assert torch.equal(d.indices, e.indices) and torch.equal(d.values, e.values), name


def test_4bit_inference_merges_each_layer_once_while_the_adapter_is_unchanged(training_setup):
    """Issue 16.14: without gradients an NF4 layer dequantizes and merges its active deltas once and keeps the
    weight (not once per generated token); its logits equal the training path's for one adapter and for two applied
    at once; changing φ in place or the active adapters rebuilds it; a training forward frees it."""
    from spiel.adapters import load_base

    model, _ = load_base(training_setup / "model", torch.float32, load_in_4bit=True, device="cpu")
    spiel = get_spiel_model(model, SpielConfig(lora_rank=2, seed=1))
    spiel.add_adapter("b", SpielConfig(lora_rank=2, seed=2))
    with torch.no_grad():
        for name in ("default", "b"):
            for delta in spiel.deltas(name).values():
                delta.values.normal_(0, 0.05)
    spiel.eval()
    layer = spiel.spiel_layers()["model.layers.0.mlp.down_proj"]
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    outputs = []
    for active in (["default"], ["default", "b"]):
        spiel.set_adapter(active)
        training_path = spiel(input_ids=ids).logits.detach()
        assert layer._inference is None  # freed by the forward pass with gradients
        with torch.no_grad():
            outputs.append(spiel(input_ids=ids).logits)
            cached = layer._inference[1]
            assert torch.equal(spiel(input_ids=ids).logits, outputs[-1]) and layer._inference[1] is cached
        torch.testing.assert_close(outputs[-1], training_path, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(*outputs)  # the second adapter mattered
    with torch.no_grad():
        spiel.deltas("b")["model.layers.0.mlp.down_proj"].values.mul_(3)
        changed = spiel(input_ids=ids).logits
    assert layer._inference[1] is not cached and not torch.allclose(changed, outputs[-1])
    torch.testing.assert_close(changed, spiel(input_ids=ids).logits.detach(), rtol=1e-6, atol=1e-6)
