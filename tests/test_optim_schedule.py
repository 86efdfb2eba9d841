"""Update schedule (Eq. 8, 11) and the sparse optimizers against hand-computed or torch references."""

import math

import pytest
import torch

from spiel.tuner.delta import SparseDelta
from spiel.tuner.optim import SparseAdamW, SparseSM3
from spiel.tuner.schedule import num_to_replace, replace_fraction, update_steps


def test_update_steps_start_at_gamma_then_every_S():
    assert update_steps(100, 20, 5) == [5, 25, 45, 65, 85]
    assert update_steps(24, 10, 5) == [5, 15]


@pytest.mark.parametrize("t,schedule,expected", [
    (5, "linear", 1.0),  # first update replaces everything
    (25, "linear", 0.2 * 75 / 100),
    (85, "linear", 0.2 * 15 / 100),
    (5, "cosine", 1.0),
    (50, "cosine", 0.1),
    (25, "cosine", 0.1 * (1 + math.cos(math.pi / 4))),
])
def test_replace_fraction(t, schedule, expected):
    assert replace_fraction(t, 100, rate=0.2, schedule=schedule, first_update=5) == pytest.approx(expected)


def test_cosine_without_full_first_replacement():
    assert replace_fraction(5, 100, rate=0.2, schedule="cosine") == pytest.approx(0.1 * (1 + math.cos(math.pi * 0.05)))


def test_num_to_replace_floors_and_clamps():
    assert num_to_replace(10, 0.15) == 1
    assert num_to_replace(100, 0.15) == 15
    assert num_to_replace(7, 1.0) == 7
    assert num_to_replace(7, 1.5) == 7


def _delta(values, indices=(0, 5, 7)):
    d = SparseDelta((3, 4), torch.tensor(indices))
    with torch.no_grad():
        d.values.copy_(torch.tensor(values))
    return d


def test_sparse_adamw_equals_torch_adamw():
    d = _delta([0.5, -0.2, 0.1])
    ref = torch.nn.Parameter(torch.tensor([0.5, -0.2, 0.1]))
    ours = SparseAdamW([d], lr=0.01, weight_decay=3.0, eps=1e-6)
    theirs = torch.optim.AdamW([ref], lr=0.01, weight_decay=3.0, eps=1e-6, betas=(0.9, 0.999))
    for grads in ([1.0, -2.0, 0.5], [0.3, 0.1, -1.0], [-0.2, 0.4, 0.0]):
        d.values.grad = torch.tensor(grads)
        ref.grad = torch.tensor(grads)
        ours.step()
        theirs.step()
        assert torch.allclose(d.values.detach(), ref.detach(), atol=1e-7)


def test_seeded_entry_first_step_uses_its_own_age():
    d = _delta([0.0, 0.0, 0.0])
    opt = SparseAdamW([d], lr=0.1, eps=1e-6)
    d.values.grad = torch.tensor([1.0, 1.0, 1.0])
    opt.step()
    # Entry 1 is regrown with means ḡ = 2, ḡ² = 5 over a = 4 steps (bias counter-corrected).
    a, gbar, g2bar = 4.0, 2.0, 5.0
    opt.reset_entries(d.values, torch.tensor([1]), exp_avg=torch.tensor([gbar * (1 - 0.9**a)]),
                      exp_avg_sq=torch.tensor([g2bar * (1 - 0.999**a)]), age=torch.tensor([a]))
    with torch.no_grad():
        d.values[1] = 0.0
    d.values.grad = torch.tensor([0.0, 3.0, 0.0])
    opt.step()
    m = 0.9 * gbar * (1 - 0.9**a) + 0.1 * 3.0
    v = 0.999 * g2bar * (1 - 0.999**a) + 0.001 * 9.0
    expected = -0.1 * (m / (1 - 0.9**5)) / (math.sqrt(v / (1 - 0.999**5)) + 1e-6)
    assert d.values[1].item() == pytest.approx(expected, rel=1e-6)
    assert opt.state[d.values]["age"].tolist() == [2.0, 5.0, 2.0]


def test_sm3_matches_hand_computation():
    # entries (0,0), (0,1), (1,1) of a 3×4 tensor: flat 0, 1, 5
    d = _delta([1.0, 1.0, 1.0], indices=(0, 1, 5))
    lr, wd, eps = 0.1, 0.5, 1e-8
    opt = SparseSM3([d], lr=lr, weight_decay=wd, eps=eps)
    d.values.grad = torch.tensor([1.0, 2.0, 3.0])
    opt.step()
    # u = g² = [1, 4, 9]; r = [4, 9, 0]; c = [1, 9, 0, 0]; update g/√u = 1 each
    phi = [1.0 * (1 - lr * wd) - lr * 1.0] * 3
    assert torch.allclose(d.values.detach(), torch.tensor(phi), atol=1e-6)
    assert opt.state[d.values]["row"].tolist() == [4.0, 9.0, 0.0]
    assert opt.state[d.values]["col"].tolist() == [1.0, 9.0, 0.0, 0.0]
    d.values.grad = torch.tensor([1.0, 1.0, 1.0])
    opt.step()
    # u = min(r_i, c_j) + 1 = [min(4,1)+1, min(4,9)+1, min(9,9)+1] = [2, 5, 10]
    u = torch.tensor([2.0, 5.0, 10.0])
    expected = torch.tensor(phi) * (1 - lr * wd) - lr / u.sqrt()
    assert torch.allclose(d.values.detach(), expected, atol=1e-6)
    assert opt.state[d.values]["row"].tolist() == [5.0, 10.0, 0.0]  # accumulators only grow
