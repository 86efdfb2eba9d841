"""The sparse linear map against a dense autograd reference (Eq. 4–6, App. E)."""

import pytest
import torch
import torch.nn.functional as F

from spiel.tuner.delta import SparseDelta, WeightGrad, sparse_linear, uniform_subset
from spiel.tuner.layers import SpielLinear


def _case(dtype, out_f=24, in_f=40, count=90, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_f, in_f, generator=g).to(dtype)
    bias = torch.randn(out_f, generator=g).to(dtype)
    delta = SparseDelta.random((out_f, in_f), count, g)
    with torch.no_grad():
        delta.values.copy_(torch.randn(count, generator=g))
    x = torch.randn(3, 5, in_f, generator=g).to(dtype)
    gy = torch.randn(3, 5, out_f, generator=g).to(dtype)
    return weight, bias, delta, x, gy


def _dense_reference(weight, bias, delta, x, gy):
    """Autograd through an explicit dense W' = W + scatter(η, φ)."""
    w = weight.clone().requires_grad_(True)
    merged = w + delta.to_dense(weight.dtype)
    xr = x.clone().requires_grad_(True)
    y = F.linear(xr, merged, bias)
    y.backward(gy)
    return y.detach(), xr.grad, w.grad.reshape(-1)[delta.indices.long()].float()


@pytest.mark.parametrize("grad_mode", ["dense", "sampled"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_forward_and_gradients_match_dense_reference(grad_mode, dtype, tol):
    weight, bias, delta, x, gy = _case(dtype)
    y_ref, gx_ref, gphi_ref = _dense_reference(weight, bias, delta, x, gy)
    xs = x.clone().requires_grad_(True)
    y = sparse_linear(xs, delta.values, delta.indices, lambda d: weight.to(d, copy=True), bias, grad_mode)
    y.backward(gy)
    assert torch.equal(y, y_ref) if dtype == torch.float32 else torch.allclose(y, y_ref, atol=tol, rtol=tol)
    assert torch.allclose(xs.grad.float(), gx_ref.float(), atol=tol, rtol=tol)
    scale = gphi_ref.abs().max()
    assert torch.allclose(delta.values.grad, gphi_ref, atol=tol * scale, rtol=tol)


def test_sampled_handles_unsorted_duplicate_indices():
    """Several adapters concatenated: unsorted, possibly repeated positions."""
    weight, _bias, delta, x, gy = _case(torch.float32)
    idx = torch.cat([delta.indices.long(), delta.indices.long()[:10].flip(0)])
    values = torch.randn(idx.numel(), requires_grad=True)
    y = sparse_linear(x, values, idx, lambda d: weight.to(d, copy=True), None, "sampled")
    y.backward(gy)
    dense_grad = (gy.reshape(-1, gy.shape[-1]).t() @ x.reshape(-1, x.shape[-1])).reshape(-1)
    assert torch.allclose(values.grad, dense_grad[idx], atol=1e-5)


def test_merged_weight_is_not_saved_for_backward():
    weight, bias, delta, x, gy = _case(torch.float32, out_f=24, in_f=40)
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    xs = x.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = sparse_linear(xs, delta.values, delta.indices, lambda d: weight.to(d, copy=True), bias, "dense")
    assert saved, "the hook saw nothing; the check would be vacuous"
    assert (24, 40) not in saved
    y.backward(gy)  # backward still works after recomputation
    assert delta.values.grad is not None


def test_spiel_linear_4bit_matches_dequantized_reference():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 32)
    q = bnb.nn.Linear4bit(64, 32, bias=True, compute_dtype=torch.float32, quant_type="nf4", compress_statistics=True)
    q.load_state_dict(dense.state_dict())
    q = q.to("cpu")  # quantizes (NF4, double-quantized statistics)
    assert q.weight.quant_state is not None
    layer = SpielLinear(q)
    assert layer.is_4bit
    layer.spiel_deltas["a"] = SparseDelta.random((32, 64), 100, torch.Generator().manual_seed(0))
    layer.active_adapters = ["a"]
    with torch.no_grad():
        layer.spiel_deltas["a"].values.normal_()
    deq = bnb.functional.dequantize_4bit(q.weight.data, q.weight.quant_state)
    x = torch.randn(4, 64)
    gy = torch.randn(4, 32)
    y_ref, _, gphi_ref = _dense_reference(deq, q.bias.detach(), layer.spiel_deltas["a"], x, gy)
    y = layer(x)
    y.backward(gy)
    assert torch.allclose(y, y_ref, atol=1e-5)
    assert torch.allclose(layer.spiel_deltas["a"].values.grad, gphi_ref, atol=1e-4)
    with pytest.raises(ValueError, match="4-bit"):
        layer.merge("a")


def test_delta_rejects_bad_indices():
    with pytest.raises(ValueError, match="out of range"):
        SparseDelta((4, 4), torch.tensor([0, 16]))
    with pytest.raises(ValueError, match="unique and sorted"):
        SparseDelta((4, 4), torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="grad_mode"):
        sparse_linear(torch.zeros(1, 4), torch.zeros(1), torch.zeros(1, dtype=torch.long),
                      lambda d: torch.zeros(4, 4, dtype=d), None, "magic")


def test_sampled_gradient_accumulates_bf16_operands_in_fp32():
    """A bf16 layer's sampled ∂L/∂φ is the fp32 product of its bf16 operands at η (issue 16.1: one dtype rule
    on every device; cuSPARSE's SDDMM has no bf16 kernel)."""
    weight, _bias, delta, x, gy = _case(torch.bfloat16, out_f=64, in_f=96, count=300)
    values = delta.values.detach().clone().requires_grad_(True)
    sparse_linear(x, values, delta.indices, lambda d: weight.to(d, copy=True), None, "sampled").backward(gy)
    exact = (gy.reshape(-1, 64).float().t() @ x.reshape(-1, 96).float()).reshape(-1)[delta.indices.long()]
    assert values.grad.dtype == torch.float32
    assert torch.allclose(values.grad, exact, atol=1e-5, rtol=1e-5)


def test_dense_bf16_gradient_is_gathered_before_its_cast():
    """Under a bf16 model the dense ∂L/∂W stays in the product's dtype (no out × in fp32 copy, as the authors'
    kernel gathers in bf16) and ∂L/∂φ is that product gathered at η and cast to fp32: the bf16 values exactly."""
    _weight, _bias, delta, x, gy = _case(torch.bfloat16, out_f=64, in_f=96, count=300)
    grad = WeightGrad(x.reshape(-1, 96), gy.reshape(-1, 64), (64, 96))
    product = (gy.reshape(-1, 64).t() @ x.reshape(-1, 96)).reshape(-1)
    assert grad.dense().dtype == torch.bfloat16 and torch.equal(grad.dense(), product)
    gathered = grad.at(delta.indices, sampled=False)
    assert gathered.dtype == torch.float32 and torch.equal(gathered, product[delta.indices.long()].float())


@pytest.mark.parametrize("numel,count", [(10, 7), (10_000, 37), (1000, 500), (5, 0)])
def test_uniform_subset_is_unique_sorted_and_in_range(numel, count):
    picked = uniform_subset(numel, count, torch.Generator().manual_seed(1))
    assert picked.numel() == count and picked.dtype == torch.int32
    assert bool((picked[1:] > picked[:-1]).all()) and (count == 0 or (int(picked.min()) >= 0 and picked.max() < numel))


def test_uniform_subset_is_uniform():
    """Each position is picked with probability count/numel: over 4000 draws of 3 out of 12 the counts per
    position stay within 5 standard deviations of 1000 (binomial sd ≈ 27), and every pair appears."""
    g = torch.Generator().manual_seed(0)
    numel, count, draws = 12, 3, 4000
    hits = torch.zeros(numel)
    pairs = set()
    for _ in range(draws):
        picked = uniform_subset(numel, count, g).tolist()
        hits[picked] += 1
        pairs.update((a, b) for a in picked for b in picked if a < b)
    expected = draws * count / numel
    sd = (draws * count / numel * (1 - count / numel)) ** 0.5
    assert (hits - expected).abs().max() < 5 * sd
    assert len(pairs) == numel * (numel - 1) // 2


def test_uniform_subset_large_range_needs_no_permutation(monkeypatch):
    """A 7b-sized tensor (45M positions) at 0.1 %: drawn without torch.randperm over the whole range."""
    calls = []
    original = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda n, *a, **k: calls.append(n) or original(n, *a, **k))
    picked = uniform_subset(11008 * 4096, 45_000, torch.Generator().manual_seed(0))
    assert picked.numel() == 45_000 and int(picked.unique().numel()) == 45_000
    assert max(calls) < 60_000
