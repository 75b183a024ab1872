"""The linearised fine-tuning surrogate for one task subset (paper eq. in §2.2).

With h(s, y) ≈ h0_s + g̃_sᵀ w (w lives in the projected space, θ̂_S = θ* + P w), fine-tuning
on the subset's samples becomes a logistic regression with offsets:

    min_w  mean_s log(1 + exp(−(h0_s + g̃_sᵀ w)))  +  λ · ν · ‖w‖²,

where ν is the mean squared feature norm of the training samples, so that λ means the same
thing for any model size and projection (scale-free). Solved with L-BFGS on the analytic
gradient, in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit, ndtr


@dataclass
class SurrogateFit:
    w: np.ndarray
    train_loss: float
    iterations: int
    converged: bool


def _objective(w: np.ndarray, g: np.ndarray, h0: np.ndarray, reg: float) -> tuple[float, np.ndarray]:
    margin = h0 + g @ w
    loss = -log_expit(margin).mean() + reg * (w @ w)
    grad = -(g.T @ expit(-margin)) / len(h0) + 2 * reg * w
    return float(loss), grad


def fit_surrogate(g: np.ndarray, h0: np.ndarray, l2: float = 1e-3, max_iter: int = 200, w0: np.ndarray | None = None) -> SurrogateFit:
    """Fit w on features ``g`` [N, d] with offsets ``h0`` [N]."""
    g = np.asarray(g, dtype=np.float64)
    h0 = np.asarray(h0, dtype=np.float64)
    if g.ndim != 2 or len(g) != len(h0) or len(h0) == 0:
        raise ValueError(f"expected features [N, d] and offsets [N] with N > 0; got {g.shape} and {h0.shape}")
    nu = float((g * g).sum(1).mean()) or 1.0
    reg = l2 * nu
    x0 = np.zeros(g.shape[1]) if w0 is None else np.asarray(w0, dtype=np.float64)
    res = minimize(_objective, x0, args=(g, h0, reg), jac=True, method="L-BFGS-B", options={"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-9})
    margin = h0 + g @ res.x
    return SurrogateFit(res.x, float(-log_expit(margin).mean()), int(res.nit), bool(res.success))


def evaluate(g: np.ndarray, h0: np.ndarray, w: np.ndarray, margin_noise: float = 0.0) -> tuple[float, float]:
    """(mean log loss, accuracy) of the linearised model on features ``g`` / offsets ``h0``.

    Accuracy counts h > 0, i.e. p(gold) > 1/2: exact for binary tasks, a lower bound on
    argmax accuracy for tasks with more than two labels. With ``margin_noise`` σ > 0 it is the
    *expected* accuracy when the first-order margin ĥ is off by Gaussian noise of σ (log-odds):
    mean Φ(ĥ/σ). The linearisation leaves most of a sample's margin change unexplained, so a
    sample just past the boundary is a coin flip rather than a sure hit; σ is fitted with c from
    real fine-tunes (``elora calibrate``; default in :mod:`.calibration`).
    """
    margin = np.asarray(h0, dtype=np.float64) + np.asarray(g, dtype=np.float64) @ w
    return float(-log_expit(margin).mean()), expected_accuracy(margin, margin_noise)


def expected_accuracy(margin: np.ndarray, margin_noise: float) -> float:
    """mean Φ(margin/σ), or the share of margins > 0 for σ = 0 (see :func:`evaluate`)."""
    if margin_noise < 0:
        raise ValueError(f"margin_noise must be ≥ 0, got {margin_noise}")
    return float(ndtr(margin / margin_noise).mean() if margin_noise > 0 else (margin > 0).mean())
