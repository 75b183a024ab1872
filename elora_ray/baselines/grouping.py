"""Alternative task groupings the ensemble's grouping is compared against (paper Table 7):
random groups with the same m, and groups by cosine similarity of the tasks' mean gradients."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..cluster.kernel import has_unit_diagonal
from ..cluster.select import cluster_tasks
from ..featurize.store import read_features


def random_groups(names: Sequence[str], sizes: Sequence[int], seed: int) -> list[list[str]]:
    """A seeded random partition of ``names`` with the given group sizes (those of the
    ensemble's groups, so only the assignment differs)."""
    if sum(sizes) != len(names):
        raise ValueError(f"group sizes {list(sizes)} do not add up to {len(names)} tasks")
    order = np.random.default_rng(seed).permutation(len(names))
    out, start = [], 0
    for s in sizes:
        out.append(sorted(names[i] for i in order[start : start + s]))
        start += s
    return out


def mean_gradient_cosine(run_dir: Path, names: Sequence[str]) -> np.ndarray:
    """n × n cosine similarity of the tasks' mean projected training gradients at θ*."""
    feats = read_features(run_dir, "train", list(names))
    means = np.stack([feats[n].grad.astype(np.float64).mean(0) for n in names])
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    unit = means / np.where(norms > 0, norms, 1.0)
    return unit @ unit.T


def gradient_cosine_groups(run_dir: Path, names: Sequence[str], m: int, seed: int, solver: str = "SCS",
                           local_scaling: int | None = None) -> tuple[list[list[str]], np.ndarray]:
    """Partition into m groups by the same clustering (same local scaling), on the gradient cosine matrix."""
    S = mean_gradient_cosine(run_dir, names)
    if m >= len(names):
        return [[n] for n in names], S
    scaling = local_scaling if has_unit_diagonal(S) else None  # a task with a zero mean gradient has no direction
    res = cluster_tasks(S, list(names), num_groups=m, solver=solver, seed=seed, local_scaling=scaling)
    return res.groups, S
