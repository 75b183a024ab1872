"""Hutchinson trace estimator against exact Hessians."""

from __future__ import annotations

import pytest
import torch

from elora_ray.analyze import hutchinson_trace


def test_exact_for_a_diagonal_hessian():
    w = torch.randn(7, requires_grad=True)
    d = torch.linspace(0.5, 3.0, 7)
    est = hutchinson_trace(lambda: 0.5 * (d * w * w).sum() + w.sum() ** 1, [w], probes=3)
    assert est.trace == pytest.approx(float(d.sum()), rel=1e-6) and est.stderr == pytest.approx(0.0, abs=1e-6)


def test_matches_the_exact_trace_of_a_small_network_loss():
    torch.manual_seed(0)
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    a = torch.randn(5, 4, requires_grad=True)
    b = torch.randn(4, 3, requires_grad=True)

    def loss_of(a_, b_):
        return torch.nn.functional.cross_entropy(torch.tanh(x @ a_) @ b_, y)

    flat = torch.cat([a.detach().ravel(), b.detach().ravel()])

    def loss_flat(v):
        return loss_of(v[:20].view(5, 4), v[20:].view(4, 3))

    exact = float(torch.autograd.functional.hessian(loss_flat, flat).diagonal().sum())
    est = hutchinson_trace(lambda: loss_of(a, b), [a, b], probes=2000, seed=1)
    assert abs(est.trace - exact) < 4 * est.stderr + 1e-6
    assert est.stderr < 0.15 * abs(exact)
    again = hutchinson_trace(lambda: loss_of(a, b), [a, b], probes=2000, seed=1)
    assert again.probes == est.probes  # seeded


def test_bad_arguments():
    w = torch.zeros(2)
    with pytest.raises(ValueError):
        hutchinson_trace(lambda: w.sum(), [w], probes=4)
    with pytest.raises(ValueError):
        hutchinson_trace(lambda: w.sum(), [w.requires_grad_()], probes=0)
