"""Local scaling (self-tuning kernel) of the affinity before clustering."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from elora_ray.cluster.kernel import has_unit_diagonal, local_scaling, scaling_for
from elora_ray.cluster.select import cluster_tasks


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def hierarchical_cosines(seed: int = 0, d: int = 200) -> tuple[np.ndarray, list[int]]:
    """Cosines of 12 tasks: 4 sources × 3 parts, the sources in two pairs that share a strong direction
    (like question-passage tasks vs single sentences): the top-level split dominates the spectrum."""
    rng = np.random.default_rng(seed)
    pair_dirs = [_unit(rng.normal(size=d)) for _ in range(2)]
    source_dirs = [_unit(rng.normal(size=d)) for _ in range(4)]
    vecs, truth = [], []
    for s in range(4):
        for _ in range(3):
            v = 2.0 * pair_dirs[s // 2] + 0.8 * source_dirs[s] + (0.15 if s < 2 else 0.6) * rng.normal(size=d) / math.sqrt(d)
            vecs.append(_unit(v))
            truth.append(s)
    U = np.stack(vecs)
    return U @ U.T, truth


def reference_kernel(S: np.ndarray, k: int) -> np.ndarray:
    """Plain loops: σ_i = distance to the k-th nearest other task, K_ij = exp(−d²/(σ_i σ_j))."""
    n = len(S)
    dist = [[math.sqrt(max(S[i][i] + S[j][j] - 2 * S[i][j], 0.0)) for j in range(n)] for i in range(n)]
    sigma = []
    for i in range(n):
        others = sorted(dist[i][j] for j in range(n) if j != i)
        sigma.append(others[min(k, n - 1) - 1])
    return np.array([[1.0 if i == j else math.exp(-dist[i][j] ** 2 / (sigma[i] * sigma[j])) for j in range(n)]
                     for i in range(n)])


@pytest.mark.parametrize("k", [1, 2, 5, 40])
def test_kernel_matches_a_plain_loop(k):
    S, _ = hierarchical_cosines(seed=3)
    K = local_scaling(S, k)
    np.testing.assert_allclose(K, reference_kernel(S, k), rtol=1e-10, atol=1e-12)
    assert np.allclose(K, K.T) and np.all(np.diag(K) == 1.0)
    assert np.all((K > 0) & (K <= 1.0))


def test_local_scaling_finds_sources_the_raw_eigengap_merges():
    S, truth = hierarchical_cosines()
    names = [f"t{i}" for i in range(len(truth))]
    raw = cluster_tasks(S, names, select_m="eigengap")
    assert raw.m == 2 and raw.local_scaling is None  # the pairs of sources: the top-level split wins
    scaled = cluster_tasks(S, names, select_m="eigengap", local_scaling=2)
    assert scaled.m == 4 and scaled.local_scaling == 2
    assert adjusted_rand_score(truth, scaled.labels) == pytest.approx(1.0)


def test_local_scaling_is_not_used_by_the_heldout_rule_or_trace_weight():
    S, truth = hierarchical_cosines()
    names = [f"t{i}" for i in range(len(truth))]
    halves = (S, S)
    held = cluster_tasks(S, names, select_m="heldout", halves=halves, local_scaling=2)
    assert held.local_scaling is None
    fixed = cluster_tasks(S, names, num_groups=4, local_scaling=2)
    assert fixed.local_scaling == 2
    traced = cluster_tasks(S, names, trace_weight=0.5, local_scaling=2)
    assert traced.local_scaling is None


def test_bad_input_is_rejected():
    S, _ = hierarchical_cosines()
    with pytest.raises(ValueError, match="unit diagonal"):
        local_scaling(S - np.diag(np.diag(S)), 2)  # a row-centred (paper) matrix has a zero diagonal
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            local_scaling(S, k)
    names = [f"t{i}" for i in range(len(S))]
    with pytest.raises(ValueError, match="unit diagonal"):
        cluster_tasks(S * 0.5, names, num_groups=2, local_scaling=2)


def test_identical_tasks_do_not_divide_by_zero():
    S = np.ones((4, 4))
    S[2:, :2] = S[:2, 2:] = 0.2
    K = local_scaling(S, 1)
    assert np.all(np.isfinite(K))
    assert K[0, 1] == 1.0 and K[0, 2] < 1e-6


def test_paper_affinity_is_partitioned_as_given():
    assert scaling_for("paper", 2) is None
    assert scaling_for("first_order", 2) == 2 and scaling_for("transfer", 3) == 3
    assert scaling_for("first_order", None) is None
    assert has_unit_diagonal(np.eye(3)) and not has_unit_diagonal(np.zeros((3, 3)))
