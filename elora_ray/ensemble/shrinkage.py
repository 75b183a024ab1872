"""Combination weights shrunk toward uniform, the amount chosen by cross-validation on the validation set.

Learned weights minimise the validation log loss, so on the validation set they always look at least as good as
uniform weights; on a few dozen validation samples per task they over-fit (in the encoder benchmarks uniform
weights beat learned ones on test in 4 of 5 seeds). ``ensemble.weights: shrunk`` keeps the learned direction
but pulls it toward uniform:

    α(λ) = (1 − λ) · α_learned + λ · uniform,    λ ∈ [0, 1]

with λ chosen by K-fold cross-validation on the task's validation samples: for each fold the learned weights are
fit on the other folds, and every λ on a grid is scored by the log loss on the held-out fold; the λ with the lowest
mean held-out loss (the largest λ among ties: the simpler model) is applied to the weights learned on all
validation samples. λ = 0 gives the learned weights, λ = 1 uniform ones. Folds are stratified by label and seeded,
so the choice is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .weights import fit_task_weights, weights_objective

LAMBDA_GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
"""The shrinkage amounts tried (0, 0.1, …, 1)."""


@dataclass
class ShrunkWeights:
    weights: np.ndarray
    shrinkage: float
    """λ: 0 = the learned weights, 1 = uniform."""
    cv_loss: dict[float, float]
    """Mean held-out log loss of each λ on the grid."""
    folds: int


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index per sample: each label's samples shuffled (seeded) and dealt round-robin over the folds."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    offset = 0
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        fold[idx] = (np.arange(len(idx)) + offset) % folds
        offset += len(idx)  # the next label continues the deal, so small labels do not all start at fold 0
    return fold


def shrunk_weights(
    logits: Sequence[np.ndarray] | np.ndarray, labels: np.ndarray, own: int | None, shrink: float = 0.0,
    solver: str = "auto", folds: int = 5, seed: int = 0, grid: Sequence[float] = LAMBDA_GRID,
) -> ShrunkWeights:
    """Learned weights (see :func:`fit_task_weights`) shrunk toward uniform by the cross-validated λ."""
    z = np.asarray(logits) if isinstance(logits, np.ndarray) else np.stack(list(logits), axis=1)
    y = np.asarray(labels, np.int64)
    n, m, _ = z.shape
    uniform = np.full(m, 1.0 / m)
    full = fit_task_weights(z, y, own, shrink, solver)
    if m == 1:
        return ShrunkWeights(full, 0.0, {}, 0)
    k = int(min(folds, n))
    if k < 2:
        return ShrunkWeights(uniform, 1.0, {}, 0)  # nothing to validate the learned weights on: the simpler model
    fold = stratified_folds(y, k, seed)
    losses = np.zeros((k, len(grid)))
    for f in range(k):
        train, held = fold != f, fold == f
        alpha = fit_task_weights(z[train], y[train], own, shrink, solver)
        for i, lam in enumerate(grid):
            losses[f, i] = weights_objective(z[held], y[held], (1.0 - lam) * alpha + lam * uniform)
    # Folds differ in size by at most one per label: weight each by its samples, as one pooled held-out loss.
    sizes = np.bincount(fold, minlength=k).astype(np.float64)
    mean = (losses * sizes[:, None]).sum(0) / sizes.sum()
    best = float(np.min(mean))
    lam = max(g for g, v in zip(grid, mean) if v <= best + 1e-9)
    weights = (1.0 - lam) * full + lam * uniform
    return ShrunkWeights(weights / weights.sum(), float(lam), {float(g): float(v) for g, v in zip(grid, mean)}, k)
