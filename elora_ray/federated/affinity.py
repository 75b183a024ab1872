"""Client affinity in the federated setting, with the estimate stage's own kinds (``estimate.affinity``).

- ``first_order`` (default): the closed form — the cosine of the clients' mean training loss-gradients
  at θ*, with two independent estimates from two seeded halves of every client's windows (for
  ``num_groups: auto``) — :func:`elora_ray.estimate.transfer.first_order_transfer`.
- ``transfer``: k subset fits of the surrogate; every client's gain on its training windows (held out
  for clients outside the subset), a pairwise additive model and the symmetric normalisation.
- ``paper``: eq. 1 — f_i(S) of each member on its *validation* windows (held out from the fit).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..config import RunConfig
from ..estimate.affinity import affinity_matrix
from ..estimate.calibration import FEDERATED_AUTO_L2
from ..estimate.stage import solve_chunk
from ..estimate.transfer import first_order_transfer, fit_pairwise, normalise_transfer, sample_halves


def federated_l2(cfg: RunConfig) -> float:
    """The surrogate λ of the federated affinity (``auto``: the fixed value it was benchmarked with)."""
    return FEDERATED_AUTO_L2 if cfg.estimate.l2 == "auto" else float(cfg.estimate.l2)


def client_halves(feats: dict[str, dict], names: list[str], seed: int) -> dict[str, np.ndarray]:
    """Seeded half (0/1) of every client's training windows, by sample id."""
    return {c: sample_halves(np.asarray(feats[c]["sample_id"]), seed) for c in names}


def fit_subsets(chunk, feats: dict, names: list[str], l2: float, max_iter: int = 200,
                halves: dict | None = None) -> tuple[list[dict], list[dict]]:
    """Surrogate fits for ``chunk = [(subset_id, client indices), ...]``: the estimate stage's own
    :func:`~elora_ray.estimate.stage.solve_chunk`. ``feats[c] = (g_train, h0_train, g_val, h0_val)``:
    the paper's f_i(S) rows score each member on its held-out validation windows; with ``halves``
    the gains of every client on each half of its training windows come back too."""
    return solve_chunk(feats, names, chunk, l2, max_iter, halves=halves)


def first_order(feats: dict[str, dict], names: list[str], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Ã, Ã on half 0, Ã on half 1) in closed form from the training windows' features."""
    train = {c: (feats[c]["g"], feats[c]["h0"]) for c in names}
    return first_order_transfer(train, client_halves(feats, names, seed), names)


def from_gains(subsets: list[tuple[int, ...]], gains: list[dict], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``transfer``: the pairwise model over the subsets' gains, normalised (full data and each half)."""
    X = np.zeros((len(subsets), n))
    for r, s in enumerate(subsets):
        X[r, list(s)] = 1.0
    order = np.array([e["subset_id"] for e in gains])
    Xo = X[order]
    ys = [np.array([e[k] for e in gains]) for k in ("gain", "gain0", "gain1")]
    full, a, b = (normalise_transfer(fit_pairwise(Xo, y)) for y in ys)
    return full, a, b


def paper(rows: list[dict], names: list[str]) -> np.ndarray:
    """``paper``: eq. 1 on the held-out validation rows, row-centred."""
    return affinity_matrix(pd.DataFrame(rows), names).centered
