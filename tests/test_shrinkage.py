"""Combination weights shrunk toward uniform by cross-validation (``ensemble.weights: shrunk``)."""

from __future__ import annotations

import numpy as np
import pytest

from elora_ray.ensemble.outputs import TaskOutputs, log_loss
from elora_ray.ensemble.shrinkage import LAMBDA_GRID, shrunk_weights, stratified_folds
from elora_ray.ensemble.weights import combine, fit_task_weights


def _held_out_loss(alpha, y, z):
    ids = np.array([f"s{i}" for i in range(len(y))])
    return log_loss(combine([{"t": TaskOutputs(ids, y, zj)} for zj in z], {"t": list(alpha)}))


def test_folds_are_stratified_seeded_and_cover_every_sample():
    y = np.array([0] * 23 + [1] * 7 + [2] * 2)
    a, b = stratified_folds(y, 5, seed=3), stratified_folds(y, 5, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, stratified_folds(y, 5, seed=4))
    assert set(a) == set(range(5))
    for label in (0, 1):
        counts = np.bincount(a[y == label], minlength=5)
        assert counts.max() - counts.min() <= 1, (label, counts)
    assert np.bincount(a, minlength=5).max() - np.bincount(a, minlength=5).min() <= 1


def test_an_informative_member_keeps_its_learned_weight():
    """Plenty of validation samples and one member that knows the labels: the cross-validated shrinkage
    stays small and the weights stay on that member."""
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    z = [rng.normal(0, 2.0, (n, 2)), 3.0 * np.eye(2)[y] + rng.normal(0, 1.0, (n, 2)), rng.normal(0, 2.0, (n, 2))]
    fit = shrunk_weights(z, y, own=0)
    assert fit.shrinkage <= 0.2, fit.cv_loss
    assert fit.weights[1] > 0.75
    learned = fit_task_weights(z, y, own=0)
    np.testing.assert_allclose(fit.weights, (1 - fit.shrinkage) * learned + fit.shrinkage / 3, atol=1e-9)


def test_exchangeable_members_are_averaged_and_that_beats_learned_weights_on_fresh_samples():
    """Exchangeable noisy members on small validation sets: learned weights chase the noise, cross-validation
    sees it and shrinks toward uniform, and on fresh samples the shrunk weights beat the learned ones
    (mean over 12 validation draws)."""
    rng = np.random.default_rng(7)
    m, n = 4, 30

    def sample(k):
        y = rng.integers(0, 2, k)
        return y, [0.6 * np.eye(2)[y] + rng.normal(0, 2.0, (k, 2)) for _ in range(m)]

    y_test, z_test = sample(20000)
    lams, gain = [], []
    for draw in range(12):
        y_val, z_val = sample(n)
        fit = shrunk_weights(z_val, y_val, own=0, seed=draw)
        learned = fit_task_weights(z_val, y_val, own=0)
        lams.append(fit.shrinkage)
        gain.append(_held_out_loss(learned, y_test, z_test) - _held_out_loss(fit.weights, y_test, z_test))
    assert np.mean(lams) >= 0.5, lams
    assert np.mean(gain) > 0.005, gain


def test_the_choice_is_the_lowest_cross_validated_loss_and_reproducible():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 60)
    z = [np.eye(3)[y] + rng.normal(0, 1.5, (60, 3)) for _ in range(3)]
    a, b = shrunk_weights(z, y, own=1, seed=11), shrunk_weights(z, y, own=1, seed=11)
    assert a.shrinkage == b.shrinkage and np.array_equal(a.weights, b.weights)
    assert set(a.cv_loss) == {float(g) for g in LAMBDA_GRID}
    best = min(a.cv_loss.values())
    assert a.cv_loss[a.shrinkage] == pytest.approx(best)
    assert a.weights.sum() == pytest.approx(1.0) and (a.weights >= 0).all()
    assert a.folds == 5


def test_one_member_or_too_few_samples():
    y = np.array([0, 1, 1])
    one = shrunk_weights([np.zeros((3, 2))], y, own=0)
    assert one.weights.tolist() == [1.0]
    tiny = shrunk_weights([np.zeros((1, 2)), np.ones((1, 2))], np.array([1]), own=0)
    assert tiny.shrinkage == 1.0 and tiny.weights.tolist() == [0.5, 0.5]
