"""Task affinity T (paper eq. 1) from subset estimates, oriented so larger = better transfer.

``T_ij = mean of f_i(S) over the sampled S containing both i and j`` with ``f = −loss`` (or
accuracy), ``n_ij`` the number of such subsets. For clustering we use the row-centred
``A_ij = T_ij − T_ii`` (how much better task i does, on average, when j is in its subset than
in an average subset of the same size); ``A_ii = 0``; pairs never sampled together get 0
(no evidence) and are reported as uncovered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class Affinity:
    names: list[str]
    raw: np.ndarray  # T (NaN where n_ij = 0)
    counts: np.ndarray  # n_ij
    centered: np.ndarray  # A used for clustering

    @property
    def coverage(self) -> float:
        n = len(self.names)
        off = ~np.eye(n, dtype=bool)
        return float((self.counts[off] > 0).mean()) if n > 1 else 1.0

    def frame(self, which: str = "centered") -> pd.DataFrame:
        return pd.DataFrame(getattr(self, which), index=self.names, columns=self.names)


def affinity_matrix(results: pd.DataFrame, names: list[str], metric: str = "loss") -> Affinity:
    """``results`` has one row per (subset_id, task) with columns ``members`` (task names) and
    ``loss`` / ``accuracy``."""
    if metric not in ("loss", "accuracy"):
        raise ValueError(f"unknown affinity metric {metric!r}")
    idx = {n: i for i, n in enumerate(names)}
    n = len(names)
    total = np.zeros((n, n))
    counts = np.zeros((n, n), dtype=np.int64)
    for row in results.itertuples(index=False):
        i = idx[row.task]
        f = -row.loss if metric == "loss" else row.accuracy
        for other in row.members:
            j = idx[other]
            total[i, j] += f
            counts[i, j] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = np.where(counts > 0, total / np.maximum(counts, 1), np.nan)
    diag = np.diag(raw).copy()
    centered = raw - diag[:, None]
    centered[np.isnan(centered)] = 0.0
    np.fill_diagonal(centered, 0.0)
    return Affinity(list(names), raw, counts, centered)
