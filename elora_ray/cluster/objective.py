"""The clustering objective (average intra-cluster density) and small partition helpers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def validate_affinity(T: object) -> np.ndarray:
    """Return ``T`` as a 2-D float64 array, raising ``ValueError`` if it is not square or not finite."""
    arr = np.asarray(T, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"task affinity matrix must be square (n x n); got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("task affinity matrix is empty (0 tasks)")
    bad = ~np.isfinite(arr)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"task affinity matrix has {int(bad.sum())} non-finite entries (NaN/inf), first at [{i}, {j}] = {arr[i, j]}"
        )
    return arr


def symmetrize(T: np.ndarray) -> np.ndarray:
    """Return ``(T + T.T) / 2``; the density objective only sees this symmetric part."""
    T = np.asarray(T, dtype=np.float64)
    return (T + T.T) / 2.0


def canonical_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Renumber cluster labels 0..m-1 in order of first appearance (drops gaps from empty clusters)."""
    mapping: dict[int, int] = {}
    out = np.empty(len(labels), dtype=np.int64)
    for i, lab in enumerate(np.asarray(labels).tolist()):
        if lab not in mapping:
            mapping[lab] = len(mapping)
        out[i] = mapping[lab]
    return out


def cluster_densities(T: np.ndarray, labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Density ``v_c^T T v_c / |c|`` of every non-empty cluster, in order of canonical label."""
    T = np.asarray(T, dtype=np.float64)
    lab = canonical_labels(labels)
    m = int(lab.max()) + 1 if lab.size else 0
    V = np.zeros((lab.size, m))
    V[np.arange(lab.size), lab] = 1.0
    sums = np.einsum("ic,ij,jc->c", V, T, V)
    return sums / V.sum(axis=0)


def average_density(T: np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Average intra-cluster density ``(1/m) sum_c v_c^T T_sym v_c / (v_c^T v_c)`` of a partition.

    ``v^T T_sym v == v^T T v``, so the symmetrisation is implicit. Empty clusters (label gaps) are ignored.
    """
    return float(cluster_densities(T, labels).mean())


def trace_objective(T: np.ndarray, labels: Sequence[int] | np.ndarray, trace_weight: float) -> float:
    """Integral value of the trace-regularised SDP objective: ``sum_c density_c + trace_weight * m``.

    For ``X = sum_c v_c v_c^T / |c|`` this equals ``<T_sym, X> + trace_weight * tr X``.
    """
    d = cluster_densities(T, labels)
    return float(d.sum() + trace_weight * d.size)


def partition_matrix(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """The ideal SDP point ``X = sum_c v_c v_c^T / |c|`` of a partition."""
    lab = np.asarray(labels)
    same = (lab[:, None] == lab[None, :]).astype(np.float64)
    return same / same.sum(axis=1, keepdims=True)


def labels_to_groups(labels: Sequence[int] | np.ndarray, names: Sequence[str]) -> list[list[str]]:
    """Task names per cluster, clusters ordered by first appearance, names in input order."""
    lab = canonical_labels(labels)
    if len(names) != lab.size:
        raise ValueError(f"{len(names)} names for {lab.size} labels")
    groups: list[list[str]] = [[] for _ in range(int(lab.max()) + 1 if lab.size else 0)]
    for name, c in zip(names, lab.tolist()):
        groups[c].append(str(name))
    return groups
