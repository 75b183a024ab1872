"""Combination weights: per task, a point on the simplex over the m group ensembles that
minimises the validation log loss of the weighted logits (a small convex program, cvxpy).

For task i with group-ensemble logits Z_j(s) ∈ R^C on its validation samples:

    min_{α ∈ Δ_m}  mean_s [ logsumexp_c Σ_j α_j Z_j(s)_c − Σ_j α_j Z_j(s)_{y_s} ]
                   + shrink · ‖α − e_own(i)‖²

(log-sum-exp of an affine map is convex). ``shrink`` pulls towards the task's own group,
which keeps tiny validation sets from over-fitting the weights.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import EloraError
from .outputs import TaskOutputs, log_loss


class WeightFitError(EloraError):
    pass


def fit_task_weights(
    logits: Sequence[np.ndarray], labels: np.ndarray, own: int, shrink: float = 0.0, solver: str = "CLARABEL"
) -> np.ndarray:
    """α on the simplex for one task; ``logits[j]`` is group j's [N, C] validation logits."""
    import cvxpy as cp

    m = len(logits)
    if m == 1:
        return np.ones(1)
    n, c = logits[0].shape
    if n == 0:
        raise WeightFitError("no validation samples to fit weights on")
    z = np.stack(logits, axis=2).astype(np.float64)  # [N, C, m]
    if not np.isfinite(z).all():
        raise WeightFitError("combination weights: group logits contain NaN/inf")
    alpha = cp.Variable(m, nonneg=True)
    mixed = cp.vstack([z[:, k, :] @ alpha for k in range(c)]).T  # [N, C]
    gold = cp.sum(z[np.arange(n), labels, :] @ alpha) / n
    nll = cp.sum(cp.log_sum_exp(mixed, axis=1)) / n - gold
    target = np.eye(m)[own]
    objective = nll + (shrink * cp.sum_squares(alpha - target) if shrink > 0 else 0)
    problem = cp.Problem(cp.Minimize(objective), [cp.sum(alpha) == 1])
    try:
        problem.solve(solver=solver)
    except cp.error.SolverError as exc:
        raise WeightFitError(f"combination weights: solver {solver} failed ({exc}); try ensemble.solver=SCS") from None
    if alpha.value is None or problem.status not in ("optimal", "optimal_inaccurate"):
        raise WeightFitError(f"combination weights: solver {solver} returned status {problem.status}")
    a = np.clip(np.asarray(alpha.value, np.float64), 0.0, None)
    return a / a.sum()


def combine(group_outs: Sequence[dict[str, TaskOutputs]], weights: dict[str, Sequence[float]]) -> dict[str, TaskOutputs]:
    """Σ_j α_ij · group j's logits for every task in ``weights`` (aligned by sample id)."""
    out: dict[str, TaskOutputs] = {}
    for task, alpha in weights.items():
        first = group_outs[0][task]
        z = np.zeros_like(first.logits)
        for a, g in zip(alpha, group_outs):
            if a:
                z += a * g[task].align_to(first.sample_ids, f"group outputs ({task})").logits
        out[task] = TaskOutputs(first.sample_ids, first.labels, z)
    return out


def task_loss(outs: TaskOutputs) -> float:
    return log_loss({"t": outs})
