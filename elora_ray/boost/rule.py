"""The boosting rule both the main pipeline (``elora boost``) and the federated ensemble follow.

One step: the group whose predictor has the highest training loss gets a new learner fit to its
residuals r = 1 − p (p: the predictor's probability of the gold label, i.e. σ of the gold
log-odds); the learner's change of the output (learner − θ*) is added with coefficient η·ρ, where
ρ ≥ 0 minimises the group's training loss of ``predictor + ρ·change`` (``boost.line_search``; a
bounded scalar search on [0, :data:`RHO_MAX`]) or is 1 (the paper's plain η·output).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from ..config.training import BoostConfig

RHO_MAX = 100.0


def worst_group(losses: Sequence[float]) -> int:
    """The index of the group with the highest training loss (the first one on ties)."""
    return int(np.argmax(np.asarray(losses, np.float64)))


def residuals_from_log_odds(gold_log_odds: np.ndarray) -> np.ndarray:
    """r = 1 − σ(h): one minus the predicted probability of the gold label."""
    return 1.0 - 1.0 / (1.0 + np.exp(-np.asarray(gold_log_odds, np.float64)))


def line_search(loss: Callable[[float], float], upper: float = RHO_MAX) -> float:
    """ρ ∈ [0, upper] minimising ``loss(ρ)`` (bounded scalar search); 0 when no ρ beats ρ = 0."""
    res = minimize_scalar(loss, bounds=(0.0, upper), method="bounded", options={"xatol": 1e-3})
    rho = float(res.x)
    return rho if loss(rho) <= loss(0.0) else 0.0


def step_coefficient(b: BoostConfig, loss: Callable[[float], float]) -> tuple[float, float]:
    """(ρ, coefficient η·ρ) of a new learner whose group's training loss along its change is ``loss``."""
    rho = line_search(loss) if b.line_search else 1.0
    return rho, b.step_size * rho
