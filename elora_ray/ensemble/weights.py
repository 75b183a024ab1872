"""Combination weights: a point on the simplex over the m group ensembles that minimises the
validation log loss of the weighted logits. One solver for the main pipeline (per task, a few
labels) and the federated ensemble (per group, a vocabulary of tens of thousands of tokens).

For logits Z_j(s) ∈ R^C of member j on validation targets s with gold label y_s:

    min_{α ∈ Δ_m}  mean_s [ logsumexp_c Σ_j α_j Z_j(s)_c − Σ_j α_j Z_j(s)_{y_s} ]
                   + shrink · ‖α − e_own‖²

(log-sum-exp of an affine map is convex). ``shrink`` pulls towards the own group's member,
which keeps tiny validation sets from over-fitting the weights.

Solvers (``ensemble.solver``): ``CLARABEL`` / ``SCS`` hand the problem to cvxpy (exact, but one
exponential cone per (target, class), so only for small label sets); ``first_order`` is
accelerated projected gradient on the simplex (FISTA with backtracking, torch, in chunks of
targets, so the memory is bounded for any vocabulary); ``auto`` (default) uses CLARABEL up to
:data:`CVXPY_MAX_TERMS` logits and ``first_order`` above. Both reach the same optimum (a test
checks them against each other).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import EloraError
from .outputs import TaskOutputs, log_loss

CVXPY_MAX_TERMS = 200_000
"""``auto``: the largest targets × classes × members a problem may have to go to cvxpy."""
CHUNK_ELEMENTS = 16_000_000
"""first_order: logits (targets × members × classes) converted to float32 at a time."""


class WeightFitError(EloraError):
    pass


def project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {α ≥ 0, Σα = 1} (sort-based, exact)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, len(v) + 1)
    rho = np.nonzero(u - css / k > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1.0), 0.0)


def fit_task_weights(
    logits: Sequence[np.ndarray] | np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, own: int | None,
    shrink: float = 0.0, solver: str = "auto",
) -> np.ndarray:
    """α on the simplex. ``logits``: a list of m ``[N, C]`` arrays (member j's logits on the N
    validation targets) or one ``[N, m, C]`` array/tensor (any float dtype); ``own``: the index of
    the member ``shrink`` pulls towards (``None``: no pull)."""
    z = logits if isinstance(logits, (np.ndarray, torch.Tensor)) else np.stack(list(logits), axis=1)
    n, m, c = z.shape
    if m == 1:
        return np.ones(1)
    if n == 0:
        raise WeightFitError("no validation samples to fit weights on")
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, np.int64)
    if len(y) != n:
        raise WeightFitError(f"combination weights: {n} targets of logits but {len(y)} labels")
    target = np.eye(m)[own] if own is not None and shrink > 0 else None
    name = solver.upper()
    if name == "AUTO":
        name = "CLARABEL" if n * m * c <= CVXPY_MAX_TERMS else "FIRST_ORDER"
    if name == "FIRST_ORDER":
        return _first_order(torch.as_tensor(z), torch.as_tensor(y), shrink, target)
    if n * m * c > 20 * CVXPY_MAX_TERMS:
        raise WeightFitError(f"combination weights: {n}×{m}×{c} logits are too many for cvxpy ({solver}); "
                             "use ensemble.solver=first_order (or auto)")
    zz = z.float().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
    return _cvxpy(zz.astype(np.float64), y, shrink, target, name)


def weights_objective(z: np.ndarray | torch.Tensor, labels, alpha: np.ndarray, shrink: float = 0.0, own: int | None = None) -> float:
    """The objective above at ``alpha`` (float64 accumulation)."""
    zt, yt = torch.as_tensor(z), torch.as_tensor(np.asarray(labels, np.int64))
    target = np.eye(zt.shape[1])[own] if own is not None and shrink > 0 else None
    f, _ = _value_and_grad(zt, yt, np.asarray(alpha, np.float64), shrink, target, grad=False)
    return f


def _value_and_grad(z: torch.Tensor, y: torch.Tensor, alpha: np.ndarray, shrink: float, target: np.ndarray | None,
                    grad: bool = True) -> tuple[float, np.ndarray]:
    n, m, c = z.shape
    a = torch.as_tensor(alpha, dtype=torch.float64)
    rows = max(1, CHUNK_ELEMENTS // max(1, m * c))
    total, g = 0.0, torch.zeros(m, dtype=torch.float64)
    for s in range(0, n, rows):
        zc = z[s : s + rows].to(torch.float64 if z.dtype == torch.float64 else torch.float32)
        yc = y[s : s + rows]
        mix = torch.einsum("m,nmc->nc", a.to(zc.dtype), zc)
        lse = torch.logsumexp(mix, dim=1)
        gold = zc[torch.arange(len(yc)), :, yc]  # [rows, m]
        total += float((lse - gold @ a.to(zc.dtype)).double().sum())
        if grad:
            p = torch.softmax(mix, dim=1)
            g += (torch.einsum("nc,nmc->m", p, zc) - gold.sum(0)).double()
    f = total / n
    grad_np = g.numpy() / n
    if target is not None:
        f += shrink * float(((alpha - target) ** 2).sum())
        grad_np = grad_np + 2.0 * shrink * (alpha - target)
    return f, grad_np


def _first_order(z: torch.Tensor, y: torch.Tensor, shrink: float, target: np.ndarray | None,
                 max_iter: int = 1000, tol: float = 1e-8) -> np.ndarray:
    """FISTA with backtracking and function-value restarts on the simplex; stops when a step moves
    no weight by more than ``tol``, or a plain projected-gradient step from the best point no
    longer descends."""
    if not bool(torch.isfinite(z).all()):
        raise WeightFitError("combination weights: member logits contain NaN/inf")
    m = z.shape[1]
    x = np.full(m, 1.0 / m)
    fx, _ = _value_and_grad(z, y, x, shrink, target, grad=False)
    yk, t, lip = x.copy(), 1.0, 1.0
    for _ in range(max_iter):
        fy, gy = _value_and_grad(z, y, yk, shrink, target)
        while True:
            cand = project_to_simplex(yk - gy / lip)
            fc, _ = _value_and_grad(z, y, cand, shrink, target, grad=False)
            d = cand - yk
            if fc <= fy + gy @ d + 0.5 * lip * (d @ d) + 1e-12 * max(1.0, abs(fy)) or lip > 1e12:
                break
            lip *= 2.0
        if fc > fx:  # not a descent
            if np.array_equal(yk, x):
                break  # even a plain step from the best point does not descend: converged
            yk, t = x.copy(), 1.0  # restart the momentum from the best point
            continue
        step = np.abs(cand - x).max()
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        yk = cand + ((t - 1.0) / t_next) * (cand - x)
        x, fx, t = cand, fc, t_next
        lip *= 0.9
        if step <= tol:
            break
    return x / x.sum()


def _cvxpy(z: np.ndarray, labels: np.ndarray, shrink: float, target: np.ndarray | None, solver: str) -> np.ndarray:
    import cvxpy as cp

    n, m, c = z.shape
    if not np.isfinite(z).all():
        raise WeightFitError("combination weights: member logits contain NaN/inf")
    alpha = cp.Variable(m, nonneg=True)
    mixed = cp.vstack([z[:, :, k] @ alpha for k in range(c)]).T  # [N, C]
    gold = cp.sum(z[np.arange(n), :, labels] @ alpha) / n
    nll = cp.sum(cp.log_sum_exp(mixed, axis=1)) / n - gold
    objective = nll + (shrink * cp.sum_squares(alpha - target) if target is not None else 0)
    problem = cp.Problem(cp.Minimize(objective), [cp.sum(alpha) == 1])
    try:
        problem.solve(solver=solver)
    except cp.error.SolverError as exc:
        raise WeightFitError(f"combination weights: solver {solver} failed ({exc}); try ensemble.solver=first_order") from None
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
