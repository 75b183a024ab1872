"""Client affinity in the federated setting: the surrogate's subset fits over clients."""

from __future__ import annotations

from ..config import RunConfig
from ..estimate.calibration import FEDERATED_AUTO_L2
from ..estimate.stage import solve_chunk


def federated_l2(cfg: RunConfig) -> float:
    """The surrogate λ of the federated affinity (``auto``: the fixed value it was benchmarked with)."""
    return FEDERATED_AUTO_L2 if cfg.estimate.l2 == "auto" else float(cfg.estimate.l2)


def fit_subsets(chunk, feats: dict, names: list[str], l2: float, max_iter: int = 200) -> list[dict]:
    """Surrogate fits for ``chunk = [(subset_id, client indices), ...]``; one row per (subset, member).

    The estimate stage's own subset fit (:func:`elora_ray.estimate.stage.solve_chunk`), with each
    client's training windows as its evaluation set (clients have no separate affinity split)."""
    rows, _ = solve_chunk({c: (g, h0, g, h0) for c, (g, h0) in feats.items()}, names, chunk, l2, max_iter)
    return rows
