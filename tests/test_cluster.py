"""Task clustering (SDP relaxation, rounding, m selection, fallback, plot) against independent references."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from elora_ray.cluster import (
    ClusterResult,
    average_density,
    cluster_tasks,
    labels_to_groups,
    local_search,
    partition_matrix,
    plot_affinity,
    round_fixed_m,
    solve_sdp,
    threshold_components,
    trace_objective,
)
from elora_ray.cluster.rounding import enforce_num_clusters


def planted(sizes: list[int], noise: float, seed: int = 0, within: float = 1.0,
            between: float = -1.0) -> tuple[np.ndarray, np.ndarray]:
    """Row-centred-style affinity (zero diagonal, not symmetric) with known groups in shuffled order."""
    rng = np.random.default_rng(seed)
    lab = np.repeat(np.arange(len(sizes)), sizes)
    lab = lab[rng.permutation(lab.size)]
    T = np.where(lab[:, None] == lab[None, :], within, between) + noise * rng.standard_normal((lab.size,) * 2)
    np.fill_diagonal(T, 0.0)
    return T, lab


def names_for(n: int) -> list[str]:
    return [f"task{i:03d}" for i in range(n)]


def brute_density(T: np.ndarray, labels) -> float:
    """Independent loop implementation of (1/m) sum_c v^T T_sym v / |c|."""
    labels = list(labels)
    total = 0.0
    clusters = sorted(set(labels))
    for c in clusters:
        members = [i for i, x in enumerate(labels) if x == c]
        s = 0.0
        for i in members:
            for j in members:
                s += (T[i][j] + T[j][i]) / 2
        total += s / len(members)
    return total / len(clusters)


def partitions_into(n: int, m: int):
    """All partitions of range(n) into exactly m non-empty blocks (restricted growth strings)."""
    def rec(prefix: list[int], k: int):
        if len(prefix) == n:
            if k == m:
                yield list(prefix)
            return
        if k + (n - len(prefix)) < m:
            return
        for c in range(min(k + 1, m)):
            yield from rec(prefix + [c], max(k, c + 1))

    yield from rec([], 0)


def refines(fine, coarse) -> bool:
    """True if every block of ``fine`` lies inside one block of ``coarse``."""
    fine, coarse = np.asarray(fine), np.asarray(coarse)
    return all(len(set(coarse[fine == c])) == 1 for c in set(fine.tolist()))


# ---------------------------------------------------------------- objective


def test_average_density_matches_bruteforce():
    rng = np.random.default_rng(3)
    for _ in range(5):
        n = int(rng.integers(2, 12))
        T = rng.standard_normal((n, n))
        lab = rng.integers(0, 4, n)
        assert average_density(T, lab) == pytest.approx(brute_density(T, lab), rel=1e-12, abs=1e-12)


def test_partition_enumeration_counts_are_stirling_numbers():
    assert sum(1 for _ in partitions_into(5, 2)) == 15
    assert sum(1 for _ in partitions_into(6, 3)) == 90
    assert sum(1 for _ in partitions_into(7, 3)) == 301


def test_labels_to_groups_orders_by_first_appearance():
    assert labels_to_groups([2, 0, 2, 1], ["a", "b", "c", "d"]) == [["a", "c"], ["b"], ["d"]]


# ---------------------------------------------------------------- SDP


@pytest.mark.parametrize("solver, tol", [("SCS", 2e-3), ("CLARABEL", 1e-5)])
def test_sdp_noiseless_planted_is_the_ideal_matrix(solver, tol):
    T, lab = planted([4, 3, 3], noise=0.0)
    X = solve_sdp(T, num_groups=3, solver=solver)
    n = T.shape[0]
    np.testing.assert_allclose(X, partition_matrix(lab), atol=tol)
    np.testing.assert_allclose(X @ np.ones(n), np.ones(n), atol=tol)
    assert X.min() >= -tol
    assert np.linalg.eigvalsh(X).min() >= -tol
    assert np.trace(X) == pytest.approx(3, abs=tol * n)


def test_sdp_trace_mode_noiseless_is_the_ideal_matrix():
    T, lab = planted([5, 3, 2], noise=0.0)
    X = solve_sdp(T, trace_weight=0.0, solver="CLARABEL")
    np.testing.assert_allclose(X, partition_matrix(lab), atol=1e-5)


def test_sdp_requires_exactly_one_mode():
    T, _ = planted([2, 2], 0.0)
    with pytest.raises(ValueError, match="exactly one"):
        solve_sdp(T, solver="SCS")
    with pytest.raises(ValueError, match="exactly one"):
        solve_sdp(T, num_groups=2, trace_weight=1.0, solver="SCS")


# ---------------------------------------------------------------- rounding


def test_threshold_rounding_never_splits_unequal_clusters():
    # a big cluster has small entries 1/|C|; thresholds relative to 1/n keep it whole
    for sizes in ([6, 2, 2], [1, 9], [3, 3, 3, 1]):
        lab = np.repeat(np.arange(len(sizes)), sizes)
        got = threshold_components(partition_matrix(lab), c=1.0)
        assert adjusted_rand_score(lab, got) == 1.0
    with pytest.raises(ValueError):
        threshold_components(np.eye(3), c=0.5)


@pytest.mark.parametrize("sizes", [[6, 2, 2], [4, 3, 3], [5, 5, 5, 5]])
def test_rounding_exact_m_and_never_splits_true_clusters(sizes):
    T, lab = planted(sizes, noise=0.2, seed=1)
    k = len(sizes)
    rng = np.random.default_rng(0)
    X = partition_matrix(lab) + 0.01 * np.abs(rng.standard_normal(T.shape))
    X = (X + X.T) / 2
    X /= X.sum(axis=1, keepdims=True)
    for m in range(1, T.shape[0] + 1):
        got, _ = round_fixed_m(T, X, m, seed=0)
        assert len(set(got.tolist())) == m, m
        if m <= k:
            assert refines(lab, got), f"m={m}: a true cluster was split"
        else:
            assert refines(got, lab), f"m={m}: a cluster mixes true clusters"
    got, _ = round_fixed_m(T, X, k)
    assert adjusted_rand_score(lab, got) == 1.0


def test_enforce_num_clusters_and_local_search():
    rng = np.random.default_rng(5)
    T = rng.standard_normal((12, 12))
    for m in (1, 2, 5, 12):
        lab = enforce_num_clusters(T, rng.integers(0, 3, 12), m)
        assert len(set(lab.tolist())) == m
        polished = local_search(T, lab)
        assert len(set(polished.tolist())) == m
        assert average_density(T, polished) >= average_density(T, lab) - 1e-12


# ---------------------------------------------------------------- cluster_tasks


@pytest.mark.parametrize("sizes", [[4, 3, 3], [5, 5, 5, 5]])
def test_planted_partition_recovered_fixed_and_auto(sizes):
    T, lab = planted(sizes, noise=0.3, seed=2)
    names = names_for(T.shape[0])
    fixed = cluster_tasks(T, names, num_groups=len(sizes))
    assert fixed.method == "sdp" and fixed.reason is None
    assert adjusted_rand_score(lab, fixed.labels) == 1.0
    auto = cluster_tasks(T, names)  # no halves: the eigengap chooses m
    assert auto.m == len(sizes)
    assert adjusted_rand_score(lab, auto.labels) == 1.0
    assert [row["m"] for row in auto.candidates] == list(range(2, 9))
    assert [row["selected"] for row in auto.candidates].index(True) == len(sizes) - 2
    assert auto.score == pytest.approx(brute_density(T, auto.labels))
    dens = cluster_tasks(T, names, select_m="density")
    assert dens.m == len(sizes)
    assert [row["m"] for row in dens.candidates] == list(range(2, 9))
    assert dens.score == pytest.approx(max(row["score"] for row in dens.candidates))
    assert dens.score == pytest.approx(brute_density(T, dens.labels))


def test_trace_regularised_mode_recovers_planted():
    T, lab = planted([4, 3, 3], noise=0.2, seed=4)
    res = cluster_tasks(T, names_for(10), trace_weight=0.0)
    assert res.method == "sdp-trace"
    assert res.m == 3
    assert adjusted_rand_score(lab, res.labels) == 1.0


def test_trace_mode_fallback_optimises_the_same_objective():
    T, lab = planted([6, 5, 4], noise=0.5, seed=6)
    sdp = cluster_tasks(T, names_for(15), trace_weight=-2.0)
    fb = cluster_tasks(T, names_for(15), trace_weight=-2.0, max_sdp_tasks=0)
    assert fb.method == "spectral-fallback" and "max_sdp_tasks=0" in fb.reason
    assert [row["m"] for row in fb.candidates] == list(range(1, 9))
    for res in (sdp, fb):
        assert adjusted_rand_score(lab, res.labels) == 1.0
        assert trace_objective(T, res.labels, -2.0) == pytest.approx(trace_objective(T, lab, -2.0))


@pytest.mark.parametrize("seed", range(4))
def test_fixed_m_is_bruteforce_optimal_on_small_n(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(5, 8))
    k = int(rng.integers(2, 4))
    sizes = np.bincount(rng.integers(0, k, n), minlength=k)
    sizes = [int(s) for s in sizes if s > 0]
    T, _ = planted(sizes, noise=0.7, seed=seed)
    names = names_for(n)
    for m in (2, 3):
        best = max(brute_density(T, p) for p in partitions_into(n, m))
        res = cluster_tasks(T, names, num_groups=m)
        assert res.m == m
        assert res.score == pytest.approx(best, abs=1e-9), (n, m, sizes)


def test_result_fields_and_json():
    T, lab = planted([3, 3], noise=0.1, seed=7)
    res = cluster_tasks(T, names_for(6), num_groups=2, progress=True)
    assert isinstance(res, ClusterResult)
    assert res.labels[0] == 0 and sorted(set(res.labels)) == [0, 1]
    assert sorted(sum(res.groups, [])) == names_for(6)
    d = json.loads(json.dumps(res.to_dict()))
    assert set(d) == {"labels", "groups", "m", "score", "method", "reason", "candidates", "local_scaling"}
    assert {"m", "score", "solve_s", "method", "status"} <= set(d["candidates"][0])


def test_one_and_two_tasks():
    one = cluster_tasks(np.zeros((1, 1)), ["a"])
    assert (one.m, one.labels, one.groups) == (1, [0], [["a"]])
    T2 = np.array([[0.0, 1.0], [0.5, 0.0]])
    assert cluster_tasks(T2, ["a", "b"]).m == 2  # auto tries m = 2..n
    together = cluster_tasks(T2, ["a", "b"], num_groups=1)
    assert together.groups == [["a", "b"]] and together.score == pytest.approx(0.75)


# ---------------------------------------------------------------- fallbacks


def test_fallback_above_max_sdp_tasks(caplog):
    T, lab = planted([15, 15, 15, 15], noise=0.8, seed=3)
    with caplog.at_level(logging.WARNING, logger="elora_ray.cluster"):
        res = cluster_tasks(T, names_for(60), max_sdp_tasks=20)
    assert res.method == "spectral-fallback"
    assert "max_sdp_tasks=20" in res.reason
    assert any("max_sdp_tasks" in r.getMessage() for r in caplog.records)
    assert res.m == 4 and adjusted_rand_score(lab, res.labels) == 1.0
    assert [row["method"] for row in res.candidates if row["selected"]] == ["spectral-fallback"]


def test_fallback_when_solver_is_inaccurate(caplog):
    T, lab = planted([4, 4, 4], noise=0.3, seed=8)
    with caplog.at_level(logging.WARNING, logger="elora_ray.cluster"):
        res = cluster_tasks(T, names_for(12), num_groups=3, max_iters=2)  # SCS cannot converge in 2 steps
    assert res.method == "spectral-fallback"
    assert "SDP solve failed" in res.reason
    assert res.candidates[0]["status"] != "optimal"
    assert any("SDP solve failed" in r.getMessage() for r in caplog.records)
    assert adjusted_rand_score(lab, res.labels) == 1.0


# ---------------------------------------------------------------- errors, plot


def test_bad_inputs_raise_clear_errors():
    T, _ = planted([2, 2], 0.1)
    names = names_for(4)
    with pytest.raises(ValueError, match="square"):
        cluster_tasks(np.zeros((3, 4)), names_for(3))
    with pytest.raises(ValueError, match="non-finite"):
        bad = T.copy()
        bad[1, 2] = np.nan
        cluster_tasks(bad, names)
    with pytest.raises(ValueError, match="non-finite"):
        bad = T.copy()
        bad[0, 3] = np.inf
        cluster_tasks(bad, names)
    with pytest.raises(ValueError, match="one name per task"):
        cluster_tasks(T, names[:3])
    with pytest.raises(ValueError, match="unique"):
        cluster_tasks(T, ["a", "a", "b", "c"])
    with pytest.raises(ValueError, match="between 1 and"):
        cluster_tasks(T, names, num_groups=5)
    with pytest.raises(ValueError, match="between 1 and"):
        cluster_tasks(T, names, num_groups=0)
    with pytest.raises(ValueError, match="'auto'"):
        cluster_tasks(T, names, num_groups="best")
    with pytest.raises(ValueError, match="not both"):
        cluster_tasks(T, names, num_groups=2, trace_weight=0.1)
    with pytest.raises(ValueError, match="not installed"):
        cluster_tasks(T, names, solver="NOPE")


def test_plot_writes_png(tmp_path):
    T, lab = planted([3, 2, 2], noise=0.2)
    names = names_for(7)
    res = cluster_tasks(T, names, num_groups=3)
    out = plot_affinity(T, names, res.groups, tmp_path / "aff.png", title="planted")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert not list(tmp_path.glob("*.tmp.png"))
    big, blab = planted([35, 35], noise=0.2)  # > 60 tasks: no tick labels, still a PNG
    groups = labels_to_groups(blab, names_for(70))
    assert plot_affinity(big, names_for(70), groups, tmp_path / "sub" / "big.png").stat().st_size > 1000


@pytest.mark.slow
def test_500_tasks_with_defaults():
    T, lab = planted([100, 80, 120, 90, 110], noise=1.0, seed=11)
    t0 = time.perf_counter()
    res = cluster_tasks(T, names_for(500))
    elapsed = time.perf_counter() - t0
    assert res.method == "spectral-fallback" and res.reason
    assert adjusted_rand_score(lab, res.labels) >= 0.95
    assert elapsed < 60
