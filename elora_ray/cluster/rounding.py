"""Turn an SDP solution (or a spectral embedding) into a partition, then polish it by local search.

Every rounding here returns labels whose clusters are unions of rows the solution says belong together:
k-means on the rows of X (identical rows -> same cluster), connected components of the graph
``X_uv >= c/n`` (the ideal X has ``X_uv = 1/|C| >= 1/n`` inside a cluster and 0 across), and spectral
k-means. Candidates are compared on the integral objective and the best one wins.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable
from typing import TypeVar

import numpy as np
from scipy.linalg import eigh
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from threadpoolctl import threadpool_limits

from .objective import average_density, canonical_labels, symmetrize, trace_objective

DEFAULT_THRESHOLDS: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0)

F = TypeVar("F", bound=Callable)


def single_threaded(fn: F) -> F:
    """Run ``fn`` with BLAS/OpenMP limited to one thread.

    The matrices here are small; multi-threaded BLAS and k-means gain little on them and can spin for
    seconds per call when the cores are shared with other work (measured: a 500x500 eigh went from
    0.06 s to 3 s, the rounding tests from 2 s to 15 s).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def kmeans_labels(points: np.ndarray, m: int, *, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """Seeded k-means (``n_init`` restarts) of the rows of ``points`` into at most ``m`` clusters."""
    from sklearn.cluster import KMeans

    n = points.shape[0]
    m = min(m, n)
    if m <= 1:
        return np.zeros(n, dtype=np.int64)
    with warnings.catch_warnings():  # "fewer distinct points than clusters" is repaired by the caller
        warnings.simplefilter("ignore")
        km = KMeans(n_clusters=m, n_init=n_init, random_state=seed).fit(points)
    return canonical_labels(km.labels_)


def top_eigvecs(S: np.ndarray, m: int, *, scaled: bool) -> np.ndarray:
    """Eigenvectors of the symmetric ``S`` for its ``m`` largest eigenvalues (scaled by sqrt(max(lam, 0)))."""
    w, V = spectral_eig(S, m)
    if scaled:
        V = V * np.sqrt(np.clip(w, 0.0, None))
    return V


def threshold_components(X: np.ndarray, c: float = 1.0) -> np.ndarray:
    """Connected components (union-find) of the graph with an edge u-v wherever ``X_uv >= c / n``.

    A true cluster C of the ideal X has all its entries equal to ``1/|C| >= 1/n``, so for ``c <= n/|C|``
    it is never split, whatever the other clusters look like. ``c >= 1`` is required.
    """
    if c < 1:
        raise ValueError(f"threshold constant c must be >= 1; got {c}")
    Xs = symmetrize(X)
    n = Xs.shape[0]
    adj = csr_matrix(Xs >= (c / n) * (1 - 1e-9))
    _, lab = connected_components(adj, directed=False)
    return canonical_labels(lab)


def _onehot_sums(S: np.ndarray, lab: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-task affinity to every cluster ``A[i, c]``, cluster sums ``v^T S v`` and sizes."""
    V = np.zeros((lab.size, m))
    V[np.arange(lab.size), lab] = 1.0
    A = S @ V
    sums = np.einsum("ic,ic->c", V, A)
    return A, sums, V.sum(axis=0)


def enforce_num_clusters(T: np.ndarray, labels: np.ndarray, m: int) -> np.ndarray:
    """Return labels with exactly ``m`` non-empty clusters (``1 <= m <= n``), changing as little as possible.

    Too many clusters: repeatedly merge the pair whose union has the best density sum. Too few: repeatedly
    move the task with the weakest tie to its cluster (taken from a cluster of size >= 2) into a new cluster.
    """
    S = symmetrize(T)
    lab = canonical_labels(labels)
    n = lab.size
    if not 1 <= m <= n:
        raise ValueError(f"cannot make {m} non-empty clusters out of {n} tasks")
    k = int(lab.max()) + 1
    while k > m:
        _, sums, sizes = _onehot_sums(S, lab, k)
        V = np.zeros((n, k))
        V[np.arange(n), lab] = 1.0
        cross = V.T @ S @ V
        merged = (sums[:, None] + sums[None, :] + 2 * cross) / (sizes[:, None] + sizes[None, :])
        gain = merged - sums[:, None] / sizes[:, None] - sums[None, :] / sizes[None, :]
        np.fill_diagonal(gain, -np.inf)
        a, b = np.unravel_index(int(np.argmax(gain)), gain.shape)
        lab = canonical_labels(np.where(lab == b, a, lab))
        k -= 1
    while k < m:
        A, _, sizes = _onehot_sums(S, lab, k)
        own = A[np.arange(n), lab] - np.diag(S)  # affinity to the rest of its own cluster
        own = np.where(sizes[lab] >= 2, own, np.inf)
        i = int(np.argmin(own))
        lab = lab.copy()
        lab[i] = k
        k += 1
    return canonical_labels(lab)


def local_search(T: np.ndarray, labels: np.ndarray, *, max_moves: int | None = None) -> np.ndarray:
    """Greedy best-improvement single-task moves while the average density strictly increases.

    The number of clusters is kept fixed: a task is only moved out of a cluster with >= 2 members.
    Each step costs O(n m); at most ``max_moves`` (default ``2 n + 20``) moves are made.
    """
    S = symmetrize(T)
    lab = canonical_labels(labels).copy()
    n = lab.size
    m = int(lab.max()) + 1
    if m <= 1 or m >= n:
        return lab
    A, sums, sizes = _onehot_sums(S, lab, m)
    diag = np.diag(S)
    rows = np.arange(n)
    tol = 1e-12 * (1.0 + float(np.abs(S).max()))
    for _ in range(max_moves if max_moves is not None else 2 * n + 20):
        a = lab
        sa, na = sums[a], sizes[a]
        # removing i from its cluster a / adding it to cluster b
        new_sa = sa - 2 * A[rows, a] + diag
        with np.errstate(divide="ignore", invalid="ignore"):
            loss_a = np.where(na >= 2, new_sa / np.maximum(na - 1, 1) - sa / na, -np.inf)
        new_sb = sums[None, :] + 2 * A + diag[:, None]
        gain_b = new_sb / (sizes[None, :] + 1) - sums[None, :] / sizes[None, :]
        gain = loss_a[:, None] + gain_b
        gain[rows, a] = -np.inf
        best = int(np.argmax(gain))
        i, b = divmod(best, m)
        if not gain[i, b] > tol:
            break
        ai = int(a[i])
        sums[ai] = new_sa[i]
        sizes[ai] -= 1
        sums[b] = new_sb[i, b]
        sizes[b] += 1
        A[:, ai] -= S[:, i]
        A[:, b] += S[:, i]
        lab[i] = b
    return canonical_labels(lab)


def best_candidate(
    T: np.ndarray,
    candidates: Iterable[tuple[str, np.ndarray]],
    score: Callable[[np.ndarray], float],
    *,
    polish: bool = True,
) -> tuple[np.ndarray, str, float]:
    """Local-search every candidate (deduplicated), return ``(labels, name, score)`` of the best one.

    Ties go to the earlier candidate.
    """
    seen: set[bytes] = set()
    best: tuple[np.ndarray, str, float] | None = None
    for name, lab in candidates:
        lab = canonical_labels(lab)
        if polish:
            lab = local_search(T, lab)
        key = lab.tobytes()
        if key in seen:
            continue
        seen.add(key)
        s = score(lab)
        if best is None or s > best[2] + 1e-12:
            best = (lab, name, s)
    if best is None:
        raise ValueError("no rounding candidates")
    return best


def spectral_eig(T: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues (descending) of ``T_sym`` and their eigenvectors (columns)."""
    S = symmetrize(T)
    n = S.shape[0]
    k = max(1, min(k, n))
    w, V = eigh(S, subset_by_index=[n - k, n - 1])
    return w[::-1].copy(), V[:, ::-1].copy()


Eig = tuple[np.ndarray, np.ndarray]


def spectral_candidates(T: np.ndarray, m: int, *, seed: int = 0,
                        eig: Eig | None = None) -> list[tuple[str, np.ndarray]]:
    """Spectral embeddings of ``T_sym`` (top-m eigenvectors: raw / scaled by sqrt(max(lam, 0)) /
    row-normalised) clustered by seeded k-means into exactly m clusters.

    ``eig`` may hold a precomputed :func:`spectral_eig` with at least m columns (reused across m).
    """
    S = symmetrize(T)
    if eig is None or eig[1].shape[1] < m:
        eig = spectral_eig(S, m)
    w, V = eig[0][:m], eig[1][:, :m]
    raw = V
    scaled = V * np.sqrt(np.clip(w, 0.0, None))
    rownorm = V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-12)
    return [(name, enforce_num_clusters(S, kmeans_labels(E, m, seed=seed), m))
            for name, E in (("spectral", raw), ("spectral-scaled", scaled), ("spectral-rownorm", rownorm))]


@single_threaded
def spectral_partition(T: np.ndarray, m: int, *, seed: int = 0, eig: Eig | None = None) -> tuple[np.ndarray, str]:
    """Scalable fallback: spectral embedding of ``T_sym`` + seeded k-means + local search, exactly m clusters.

    Returns ``(labels, name of the winning embedding)``.
    """
    S = symmetrize(T)
    if m <= 1 or m >= S.shape[0]:
        lab = np.zeros(S.shape[0], dtype=np.int64) if m <= 1 else np.arange(S.shape[0])
        return lab, "trivial"
    lab, name, _ = best_candidate(S, spectral_candidates(S, m, seed=seed, eig=eig), lambda l: average_density(S, l))
    return lab, name


@single_threaded
def round_fixed_m(T: np.ndarray, X: np.ndarray, m: int, *, seed: int = 0,
                  thresholds: Iterable[float] = DEFAULT_THRESHOLDS, polish: bool = True,
                  eig: Eig | None = None) -> tuple[np.ndarray, str]:
    """Round an SDP solution to exactly ``m`` non-empty clusters; return ``(labels, rounding name)``.

    Candidates: k-means on the rows of X, k-means on X's top-m eigenvectors, threshold components
    (merged/split to m clusters), plus the spectral candidates of T (``eig``: precomputed
    :func:`spectral_eig`); each is local-searched and the one
    with the best average density is kept.
    """
    S = symmetrize(T)
    n = S.shape[0]
    if m <= 1 or m >= n:
        return (np.zeros(n, dtype=np.int64) if m <= 1 else np.arange(n)), "trivial"
    Xs = symmetrize(X)
    cands: list[tuple[str, np.ndarray]] = [
        ("kmeans-rows", kmeans_labels(Xs, m, seed=seed)),
        ("kmeans-eig", kmeans_labels(top_eigvecs(Xs, m, scaled=True), m, seed=seed)),
    ]
    cands += [(f"threshold-c{c:g}", threshold_components(Xs, c)) for c in thresholds]
    cands = [(name, enforce_num_clusters(S, lab, m)) for name, lab in cands]
    cands += spectral_candidates(S, m, seed=seed, eig=eig)
    lab, name, _ = best_candidate(S, cands, lambda l: average_density(S, l), polish=polish)
    return lab, name


@single_threaded
def round_trace(T: np.ndarray, X: np.ndarray, trace_weight: float, *, seed: int = 0,
                thresholds: Iterable[float] = DEFAULT_THRESHOLDS, polish: bool = True) -> tuple[np.ndarray, str]:
    """Round a trace-regularised SDP solution; the number of clusters comes out of the rounding.

    Candidates: threshold components ``X_uv >= c/n`` for each ``c`` in ``thresholds``, and k-means on the
    rows of X with ``m = round(tr X) + {-1, 0, 1}``; each is local-searched (at its own m) and the one with the best
    integral objective ``sum_c density_c + trace_weight * m`` is kept.
    """
    S = symmetrize(T)
    Xs = symmetrize(X)
    n = S.shape[0]
    cands = [(f"threshold-c{c:g}", threshold_components(Xs, c)) for c in thresholds]
    m_tr = int(round(float(np.trace(Xs))))
    for m in sorted({int(np.clip(m_tr + d, 1, n)) for d in (-1, 0, 1)}):
        cands.append((f"kmeans-rows-m{m}", enforce_num_clusters(S, kmeans_labels(Xs, m, seed=seed), m)))
    lab, name, _ = best_candidate(S, cands, lambda l: trace_objective(S, l, trace_weight), polish=polish)
    return lab, name
