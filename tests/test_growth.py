"""DROP and GROW on hand-built cases, and invariants over many rounds (§3.2–3.3)."""

import torch

from spiel.tuner.delta import SparseDelta, WeightGrad
from spiel.tuner.growth import GradientEstimator, drop_positions, grow_ag, grow_ma
from spiel.tuner.optim import SparseAdamW, SparseSM3


def _delta(shape, indices, values):
    d = SparseDelta(shape, torch.tensor(indices))
    with torch.no_grad():
        d.values.copy_(torch.tensor(values))
    return d


def test_drop_picks_k_smallest_magnitudes():
    values = torch.tensor([0.5, -0.1, 0.3, -0.05, 0.2])
    assert drop_positions(values, 2).tolist() == [3, 1]
    assert drop_positions(values, 0).tolist() == []


def test_estimator_candidates_and_means_equal_hand_computation():
    g = torch.Generator().manual_seed(0)
    shape = (6, 5)
    est = GradientEstimator(num_candidates=4)
    micro = [(torch.randn(3, 5, generator=g), torch.randn(3, 6, generator=g)) for _ in range(4)]
    dense = [(gy.t() @ x).reshape(-1) for x, gy in micro]
    # two optimizer steps of two micro-batches each
    for step in range(2):
        for x, gy in micro[2 * step: 2 * step + 2]:
            est.observe(WeightGrad(x, gy, shape))
        est.end_step()
    expected_candidates = torch.topk(dense[0].abs(), 4).indices.sort().values
    assert est.candidates.tolist() == expected_candidates.tolist()
    step_grads = [dense[0] + dense[1], dense[2] + dense[3]]
    mean_g = (step_grads[0] + step_grads[1])[expected_candidates] / 2
    mean_g2 = (step_grads[0] ** 2 + step_grads[1] ** 2)[expected_candidates] / 2
    _cands, got_g, got_g2 = est.means()
    assert torch.allclose(got_g, mean_g, atol=1e-5)
    assert torch.allclose(got_g2, mean_g2, atol=1e-4)


def test_sampled_estimator_equals_dense_estimator():
    g = torch.Generator().manual_seed(3)
    micro = [(torch.randn(4, 7, generator=g), torch.randn(4, 9, generator=g)) for _ in range(3)]
    ests = [GradientEstimator(10, sampled=False), GradientEstimator(10, sampled=True)]
    for est in ests:
        for x, gy in micro:
            est.observe(WeightGrad(x, gy, (9, 7)))
            est.end_step()
    (c0, g0, s0), (c1, g1, s1) = (e.means() for e in ests)
    assert torch.equal(c0, c1)
    assert torch.allclose(g0, g1, atol=1e-5) and torch.allclose(s0, s1, atol=1e-4)


def test_grow_ag_hand_built_case():
    d = _delta((4, 4), [0, 5, 10, 15], [0.5, 0.03, -0.3, 0.02])
    opt = SparseAdamW([d], lr=0.1)
    d.values.grad = torch.tensor([1.0, 2.0, 3.0, 4.0])
    opt.step()
    kept_state = {k: v[1].item() for k, v in opt.state[d.values].items()}  # entry at position 5
    before = d.values.detach().clone()  # [0.4, -0.07, -0.4, -0.08]: |φ| smallest at 5, then 15
    est = GradientEstimator(5)
    est.candidates = torch.tensor([0, 2, 5, 7, 9])
    est.grad_sum = torch.tensor([9.0, 1.0, 8.0, -5.0, 0.5]) * 4
    est.grad_sq_sum = torch.tensor([81.0, 1.0, 64.0, 25.0, 0.25]) * 4
    est.steps = 4
    # drop the two smallest |φ|: positions 5 and 15. Valid candidates exclude 0 and 10 (remaining).
    # Top-2 by |ḡ|: 5 (8) and 7 (−5). 5 — the very first to drop — is regrown at once: it keeps value
    # and state, so 7 must take the slot of 15, not of 5.
    result = grow_ag(d, opt, est, n=2, step=25)
    assert result.grown.tolist() == [7] and result.dropped.tolist() == [15]
    assert d.indices.tolist() == [0, 5, 7, 10]
    assert torch.equal(d.values.detach(), torch.stack([before[0], before[1], torch.tensor(0.0), before[2]]))
    assert d.grown_at.tolist() == [0, 0, 25, 0]
    state = opt.state[d.values]
    assert {k: v[1].item() for k, v in state.items()} == kept_state
    assert state["age"][2].item() == 4.0
    assert abs(state["exp_avg"][2].item() - (-5.0 * (1 - 0.9**4))) < 1e-6
    assert abs(state["exp_avg_sq"][2].item() - 25.0 * (1 - 0.999**4)) < 1e-7


def test_grow_ma_takes_top_scores_among_inactive_positions():
    # 3×4 tensor; active flat positions 0, 5, 11
    d = _delta((3, 4), [0, 5, 11], [0.3, 0.01, -0.02])
    opt = SparseSM3([d])
    row, col = opt.accumulators(d)
    row.copy_(torch.tensor([1.0, 5.0, 2.0]))
    col.copy_(torch.tensor([4.0, 6.0, 2.0, 3.0]))
    # r⊗c = [[4,6,2,3],[20,30,10,15],[8,12,4,6]]; position 5 (30) is active and dropped: not eligible.
    result = grow_ma(d, opt, n=2, step=7)
    assert sorted(result.grown.tolist()) == [4, 7]
    assert d.indices.tolist() == [0, 4, 7]
    assert torch.equal(d.values.detach(), torch.tensor([0.3, 0.0, 0.0]))
    assert row.tolist() == [1.0, 5.0, 2.0]  # SM3 state untouched


def test_many_rounds_keep_invariants():
    g = torch.Generator().manual_seed(0)
    shape = (16, 12)
    for growth in ("ag", "ma"):
        d = SparseDelta.random(shape, 30, g)
        opt = SparseAdamW([d]) if growth == "ag" else SparseSM3([d])
        for step in range(1, 41):
            d.values.grad = torch.randn(30, generator=g)
            opt.step()
            n = int(torch.randint(0, 31, (1,), generator=g))
            if growth == "ag":
                est = GradientEstimator(30)
                x, gy = torch.randn(5, 12, generator=g), torch.randn(5, 16, generator=g)
                est.observe(WeightGrad(x, gy, shape))
                est.end_step()
                result = grow_ag(d, opt, est, n, step)
            else:
                result = grow_ma(d, opt, n, step)
            idx = d.indices.long()
            assert idx.numel() == 30
            assert torch.unique(idx).numel() == 30 and bool((idx[1:] > idx[:-1]).all())
            assert int(idx.min()) >= 0 and int(idx.max()) < shape[0] * shape[1]
            gone = result.dropped[~torch.isin(result.dropped, idx)]
            assert gone.numel() == result.dropped.numel()
            assert bool((d.to_dense().view(-1)[gone] == 0).all())  # dropped = back at the base weight
            assert bool((d.values.detach()[torch.isin(idx, result.grown)] == 0).all())
