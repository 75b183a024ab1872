"""Subset sampling, the linearised surrogate, and the affinity matrix against references."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import log_expit

from elora_ray.estimate import affinity_matrix, evaluate, fit_surrogate, sample_subsets, solve_subsets
from elora_ray.estimate.subsets import default_subset_size


def test_subsets_are_seeded_distinct_and_balanced():
    a = sample_subsets(10, 200, 3, seed=1)
    assert a == sample_subsets(10, 200, 3, seed=1) and a != sample_subsets(10, 200, 3, seed=2)
    assert all(len(set(s)) == 3 and list(s) == sorted(s) for s in a)
    assert len(set(a)) == 120  # C(10, 3): every subset before any repeat
    counts = np.bincount([i for s in a for i in s], minlength=10)
    assert counts.max() - counts.min() <= 1
    pairs = {p for s in a for p in itertools.combinations(s, 2)}
    assert len(pairs) == 45
    with pytest.raises(ValueError):
        sample_subsets(3, 5, 4, 0)
    assert default_subset_size(10) == 3 and default_subset_size(3) == 2 and default_subset_size(2) == 1
    assert default_subset_size(500) == 10 and default_subset_size(7) == 2


def test_surrogate_matches_an_independent_torch_solution():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(300, 20))
    w_true = rng.normal(size=20)
    h0 = rng.normal(size=300) * 0.5
    y_margin = h0 + g @ w_true + rng.logistic(size=300)
    # Offsets: points with positive noisy margin are "gold" (h > 0 wanted): flip rows with negative.
    sign = np.where(y_margin > 0, 1.0, -1.0)
    g, h0 = g * sign[:, None], h0 * sign
    l2 = 1e-2
    fit = fit_surrogate(g, h0, l2=l2)
    nu = (g * g).sum(1).mean()
    # Reference: plain full-batch Newton in float64 torch with autograd Hessian.
    G, H0 = torch.tensor(g), torch.tensor(h0)
    w = torch.zeros(20, dtype=torch.float64)

    def obj(w):
        return torch.nn.functional.softplus(-(H0 + G @ w)).mean() + l2 * nu * (w @ w)

    for _ in range(30):
        grad = torch.autograd.functional.jacobian(obj, w)
        hess = torch.autograd.functional.hessian(obj, w)
        w = w - torch.linalg.solve(hess, grad)
    np.testing.assert_allclose(fit.w, w.numpy(), rtol=1e-4, atol=1e-6)
    assert fit.converged
    loss, acc = evaluate(g, h0, fit.w)
    assert loss == pytest.approx(float(-log_expit(h0 + g @ fit.w).mean()))
    assert acc == pytest.approx(float(((h0 + g @ fit.w) > 0).mean()))
    assert loss < evaluate(g, h0, np.zeros(20))[0]


def test_affinity_follows_equation_one():
    names = ["a", "b", "c"]
    results = pd.DataFrame([
        {"subset_id": 0, "members": ["a", "b"], "task": "a", "loss": 1.0, "accuracy": 0.5},
        {"subset_id": 0, "members": ["a", "b"], "task": "b", "loss": 2.0, "accuracy": 0.4},
        {"subset_id": 1, "members": ["a", "c"], "task": "a", "loss": 3.0, "accuracy": 0.7},
        {"subset_id": 1, "members": ["a", "c"], "task": "c", "loss": 0.5, "accuracy": 0.9},
    ])
    aff = affinity_matrix(results, names, "loss")
    assert aff.counts.tolist() == [[2, 1, 1], [1, 1, 0], [1, 0, 1]]
    assert aff.raw[0, 0] == -2.0 and aff.raw[0, 1] == -1.0 and aff.raw[0, 2] == -3.0 and np.isnan(aff.raw[1, 2])
    assert aff.centered[0].tolist() == [0.0, 1.0, -1.0] and aff.centered[1, 2] == 0.0
    assert aff.coverage == pytest.approx(4 / 6)
    acc = affinity_matrix(results, names, "accuracy")
    assert acc.raw[0, 2] == 0.7


def test_solve_subsets_recovers_planted_transfer():
    """Two families whose gradient features point in opposite directions: same-family
    partners must score higher than cross-family partners."""
    rng = np.random.default_rng(0)
    d = 16
    dirs = {"x": rng.normal(size=d), "y": -rng.normal(size=d)}
    feats = {}
    for fam in "xy":
        for k in range(3):
            def make(n):
                g = dirs[fam] + 0.8 * rng.normal(size=(n, d))
                return g.astype(np.float32), np.full(n, -0.5, np.float32)
            gt, ht = make(80)
            gv, hv = make(40)
            feats[f"{fam}{k}"] = (gt, ht, gv, hv)
    names = sorted(feats)
    subs = sample_subsets(6, 60, 2, 0)
    rows = solve_subsets(feats, names, list(enumerate(subs)), 1e-3, 200)
    aff = affinity_matrix(pd.DataFrame(rows), names, "loss").centered
    fam = np.array([n[0] for n in names])
    same = (fam[:, None] == fam[None, :]) & ~np.eye(6, dtype=bool)
    assert aff[same].min() > aff[~same & ~np.eye(6, dtype=bool)].max()


def test_expected_accuracy_under_margin_noise_matches_monte_carlo():
    """evaluate(margin_noise=σ) is the accuracy expected when each margin is off by N(0, σ²): checked by
    sampling that noise; σ = 0 is the share of positive margins."""
    rng = np.random.default_rng(0)
    g, h0, w = rng.normal(size=(300, 6)), rng.normal(0.5, 1.0, size=300), rng.normal(scale=0.3, size=6)
    margin = h0 + g @ w
    loss_hard, acc_hard = evaluate(g, h0, w)
    assert acc_hard == float((margin > 0).mean())
    for sigma in (0.1, 0.5, 2.0):
        loss, acc = evaluate(g, h0, w, margin_noise=sigma)
        sampled = float(((margin[None, :] + sigma * rng.normal(size=(4000, len(margin)))) > 0).mean())
        assert abs(acc - sampled) < 3e-3, (sigma, acc, sampled)
        assert loss == loss_hard  # the loss does not depend on σ
    assert abs(evaluate(g, h0, w, margin_noise=1e-9)[1] - acc_hard) < 1e-12
    with pytest.raises(ValueError, match="margin_noise"):
        evaluate(g, h0, w, margin_noise=-0.1)


def test_a_bad_margin_noise_in_calibration_json_falls_back_to_the_default(tmp_path, monkeypatch, caplog):
    import json

    from elora_ray.config import load_config
    from elora_ray.estimate.calibration import DEFAULT_MARGIN_NOISE, cache_key, margin_noise
    from elora_ray.layout import RunLayout

    monkeypatch.setenv("ELORA_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, ["model.name_or_path=tiny-bert"])
    path = RunLayout(tmp_path).calibration
    path.write_text(json.dumps({"key": cache_key(cfg), "constant": 0.001, "margin_noise": -0.2}))
    assert margin_noise(cfg, tmp_path) == (DEFAULT_MARGIN_NOISE[cfg.feature_gradient()], "default")
    assert "ignoring margin_noise -0.2" in caplog.text and str(path) in caplog.text
    path.write_text(json.dumps({"key": cache_key(cfg), "constant": 0.001, "margin_noise": 0.3}))
    assert margin_noise(cfg, tmp_path) == (0.3, str(path))
