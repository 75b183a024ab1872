"""Transfer affinity: how much fitting on task j lowers task i's loss on data the fit never saw.

Why not the paper's eq. 1 as is (measured on real planted suites, see
``benchmarks/results/affinity_planted_full_rank.md``): scoring f_i(S) only for i ∈ S on i's small
validation set is dominated by noise (the mean loss-gradient of a binary task is a near
cancellation of its two classes' gradients, so 100 validation samples flip its sign), and
the first-order gain of i from j grows with the size of j's gradient, so a task that is easy
to learn "helps" every row. Both grouped parts of one dataset against their source.

What we estimate instead, from the same k subset regressions:

1. **Out-of-subset gains.** After fitting w_S on the training samples of S, every task i is
   scored: gain_i(S) = L_i(θ*) − L_i(θ* + P w_S) on i's *training* samples. For i ∉ S these
   samples were never seen by the fit (held out, and three times as many as validation); for
   i ∈ S the gain contains i's in-sample self-fit.
2. **Pairwise additive model** over all k subsets: gain_i(S) ≈ Σ_{j∈S} a_ij, solved for all
   rows at once by ridge least squares on the k × n membership matrix. a_ij (i ≠ j) is the
   transfer from j to i; a_ii the self-gain. With the sum-of-losses surrogate (``l2: auto``) a
   first-order fit is exactly additive, so this model is exact in that limit.
3. **Normalisation.** Ã_ij = sqrt(r_ij r_ji) with r_ij = a_ij / a_ii: transfer relative to what
   each task gains from its own data, symmetrised so that neither side's scale remains
   (:func:`normalise_transfer`). In the first-order limit a_ij = ⟨G_i, n_j G_j⟩ and
   Ã is the cosine of the tasks' mean loss-gradients (the measure that recovers sources), but
   with a real regularised fit it also carries the surrogate's non-linear effects (conflicts,
   saturation), which is what predicts fine-tuning.
4. **Two independent halves.** Each task's training samples are split in two seeded halves;
   every subset is also fitted on each half of its samples and scored on the same half of every
   task, giving two independent estimates of Ã whose disagreement is the noise; ``cluster.select_m: heldout`` chooses m by how well a partition of one half
   predicts the other.
"""

from __future__ import annotations

import hashlib

import numpy as np

#: Ridge on the k × n membership design, relative to the mean diagonal of XᵀX.
DEFAULT_DESIGN_RIDGE = 1e-3


def sample_halves(sample_ids: np.ndarray, seed: int) -> np.ndarray:
    """Half (0 or 1) of every training sample: seeded by sample id, balanced within the task.

    The same sample always lands in the same half for a given seed, whatever the order or the
    other tasks, so resumed or reordered runs agree.
    """
    keys = np.array([int.from_bytes(hashlib.blake2b(f"{seed}/{s}".encode(), digest_size=8).digest(), "little")
                     for s in np.asarray(sample_ids).astype(str)], dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    half = np.empty(len(keys), dtype=np.int8)
    half[order] = np.arange(len(keys)) % 2
    return half


def fit_pairwise(membership: np.ndarray, gains: np.ndarray, ridge: float = DEFAULT_DESIGN_RIDGE) -> np.ndarray:
    """Least squares ``gains[S, i] ≈ Σ_j membership[S, j] a_ij`` for every i; returns A [n, n].

    ``membership`` is the k × n 0/1 design, ``gains`` k × n. The ridge is relative to the
    mean number of appearances, so it means the same for any k and subset size.
    """
    X = np.asarray(membership, dtype=np.float64)
    Y = np.asarray(gains, dtype=np.float64)
    if X.shape != Y.shape:
        raise ValueError(f"membership {X.shape} and gains {Y.shape} must both be k × n")
    xtx = X.T @ X
    scale = float(np.mean(np.diag(xtx))) or 1.0
    return np.linalg.solve(xtx + ridge * scale * np.eye(X.shape[1]), X.T @ Y).T


def normalise_transfer(A: np.ndarray) -> np.ndarray:
    """Symmetric transfer relative to self-transfer, free of each task's gain scale; Ã_ii = 1.

    With r_ij = a_ij / a_ii (what j's data gives i, relative to what i's own data gives it),
    Ã_ij = sign · sqrt(r_ij r_ji) when both agree in sign, else (r_ij + r_ji) / 2. Under the model
    a_ij = s_i t_j c_ij (target sensitivity s_i, source strength t_j, similarity c_ij, c_ii = 1)
    this is exactly sqrt(c_ij c_ji): neither an easy-to-learn source (large t_j) nor a sensitive
    target (large s_i) dominates. In the first-order limit it is the cosine of the mean
    loss-gradients. Self-gains below 1% of the median positive self-gain are raised to it, so a
    task that cannot learn from its own data does not blow its row up.
    """
    A = np.asarray(A, dtype=np.float64)
    d = np.diag(A).copy()
    pos = d[d > 0]
    floor = 0.01 * float(np.median(pos)) if pos.size else 1.0
    R = A / np.maximum(d, floor)[:, None]
    P = R * R.T
    same = (R > 0) & (R.T > 0) | (R < 0) & (R.T < 0)
    S = np.where(same, np.sign(R) * np.sqrt(np.abs(P)), (R + R.T) / 2)
    np.fill_diagonal(S, 1.0)
    return S


def first_order_transfer(train: dict[str, tuple[np.ndarray, np.ndarray]], halves: dict[str, np.ndarray],
                         names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed form in O(n² d): a_ij = ⟨G_i, n_j G_j⟩ with G the mean loss-gradient at θ*.

    This is the gain of i's training loss from one gradient step on j's summed loss (the limit
    of the surrogate for a strong regulariser). Returns (Ã, Ã on half 0, Ã on half 1), each half
    computed from that half of every task's samples only (independent estimates).
    """
    from scipy.special import expit

    def mean_grad(g: np.ndarray, h0: np.ndarray, sel: np.ndarray | None = None) -> np.ndarray:
        if sel is not None:
            g, h0 = g[sel], h0[sel]
        return -(expit(-np.asarray(h0, np.float64))[:, None] * np.asarray(g, np.float64)).mean(0)

    out = []
    for part in (None, 0, 1):  # all samples, then two independent halves (both sides from one half)
        G = np.stack([mean_grad(*train[t], None if part is None else halves[t] == part) for t in names])
        counts = np.array([len(train[t][1]) for t in names], dtype=np.float64)
        out.append(normalise_transfer(G @ (counts[:, None] * G).T))
    return out[0], out[1], out[2]
