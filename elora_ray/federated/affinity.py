"""Client affinity in the federated setting: the surrogate's subset fits over clients."""

from __future__ import annotations

import numpy as np

from ..config import RunConfig
from ..estimate.calibration import FEDERATED_AUTO_L2
from ..estimate.surrogate import evaluate as surrogate_loss
from ..estimate.surrogate import fit_surrogate


def federated_l2(cfg: RunConfig) -> float:
    """The surrogate λ of the federated affinity (``auto``: the fixed value it was benchmarked with)."""
    return FEDERATED_AUTO_L2 if cfg.estimate.l2 == "auto" else float(cfg.estimate.l2)


def fit_subsets(chunk, feats: dict, names: list[str], l2: float) -> list[dict]:
    """Surrogate fits for ``chunk = [(subset_id, client indices), ...]``; one row per (subset, member)."""
    rows = []
    for sid, subset in chunk:
        members = [names[i] for i in subset]
        g = np.concatenate([feats[c][0] for c in members])
        h0 = np.concatenate([feats[c][1] for c in members])
        fit = fit_surrogate(g, h0, l2)
        for c in members:
            loss, acc = surrogate_loss(feats[c][0], feats[c][1], fit.w)
            rows.append({"subset_id": sid, "task": c, "members": members, "loss": loss, "accuracy": acc})
    return rows
