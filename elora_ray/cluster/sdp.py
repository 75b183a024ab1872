"""SDP relaxation of average-density clustering (EnsembleLoRA paper, appendix A.1).

A partition into m clusters with indicators ``v_c`` gives ``X = sum_c v_c v_c^T / |c|``, which satisfies
``X e = e``, ``X >= 0`` (elementwise), ``X`` PSD and ``tr X = m``; and ``<T_sym, X>`` is ``m`` times the
average density. Dropping integrality leaves a convex SDP, solved here with cvxpy.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from .objective import symmetrize, validate_affinity

#: cvxpy statuses accepted as a usable solution; anything else (incl. ``optimal_inaccurate``) raises.
ACCEPTED_STATUSES = ("optimal",)


class SDPSolveError(RuntimeError):
    """The SDP solver failed or returned a status other than ``optimal``.

    ``status`` is the cvxpy status string (or ``"error"`` when the solver raised).
    """

    def __init__(self, message: str, *, status: str, solve_s: float) -> None:
        super().__init__(message)
        self.status = status
        self.solve_s = solve_s


def solve_sdp(
    T: np.ndarray,
    *,
    num_groups: int | None = None,
    trace_weight: float | None = None,
    solver: str = "SCS",
    max_iters: int | None = None,
) -> np.ndarray:
    """Solve the SDP relaxation and return the (symmetrised) optimal ``X`` as an n x n array.

    Exactly one of ``num_groups`` (fixed-m mode: ``max <T_sym, X>`` with ``tr X = m``) and ``trace_weight``
    (paper mode: ``max <T_sym, X> + trace_weight * tr X``) must be given. Both modes impose ``X e = e``,
    ``X >= 0`` and ``X`` PSD. ``solver`` is passed explicitly to cvxpy ("SCS" or "CLARABEL");
    ``max_iters`` caps the solver's iterations. Raises :class:`SDPSolveError` unless the status is optimal.
    """
    X, _status, _secs = solve_sdp_info(
        T, num_groups=num_groups, trace_weight=trace_weight, solver=solver, max_iters=max_iters
    )
    return X


def _trivial_solution(n: int, m: int) -> np.ndarray | None:
    """The feasible set is a single point when m == 1 (X = ee^T/n) or m == n (X = I)."""
    if m == 1:
        return np.full((n, n), 1.0 / n)
    if m == n:
        return np.eye(n)
    return None


def solve_sdp_info(
    T: np.ndarray,
    *,
    num_groups: int | None = None,
    trace_weight: float | None = None,
    solver: str = "SCS",
    max_iters: int | None = None,
) -> tuple[np.ndarray, str, float]:
    """Like :func:`solve_sdp` but also return the cvxpy status and the wall time of the solve in seconds."""
    import cvxpy as cp

    T = validate_affinity(T)
    n = T.shape[0]
    if (num_groups is None) == (trace_weight is None):
        raise ValueError("give exactly one of num_groups (fixed-m SDP) or trace_weight (trace-regularised SDP)")
    if num_groups is not None:
        if not 1 <= int(num_groups) <= n:
            raise ValueError(f"num_groups must be in 1..{n} (number of tasks); got {num_groups}")
        trivial = _trivial_solution(n, int(num_groups))
        if trivial is not None:
            return trivial, "optimal", 0.0
    elif not np.isfinite(trace_weight):
        raise ValueError(f"trace_weight must be finite; got {trace_weight}")
    if n == 1:
        return np.ones((1, 1)), "optimal", 0.0

    S = symmetrize(T)
    scale = float(np.abs(S).max()) or 1.0  # condition the solver; the argmax is unchanged
    C = S / scale

    X = cp.Variable((n, n), PSD=True)
    ones = np.ones(n)
    cons = [X @ ones == ones, X >= 0]
    objective = cp.sum(cp.multiply(C, X))
    if num_groups is not None:
        cons.append(cp.trace(X) == float(num_groups))
    else:
        objective = objective + (float(trace_weight) / scale) * cp.trace(X)
    prob = cp.Problem(cp.Maximize(objective), cons)

    kwargs: dict = {}
    if max_iters is not None:
        kwargs["max_iters" if solver.upper() == "SCS" else "max_iter"] = int(max_iters)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():  # an inaccurate status is reported by SDPSolveError instead
            warnings.simplefilter("ignore", UserWarning)
            prob.solve(solver=solver, **kwargs)
    except Exception as exc:  # cvxpy.SolverError, or a solver crashing on a degenerate problem
        secs = time.perf_counter() - t0
        raise SDPSolveError(f"{solver} failed on the n={n} SDP: {exc}", status="error", solve_s=secs) from exc
    secs = time.perf_counter() - t0
    status = str(prob.status)
    if status not in ACCEPTED_STATUSES or X.value is None:
        raise SDPSolveError(f"{solver} returned status '{status}' on the n={n} SDP", status=status, solve_s=secs)
    Xv = np.asarray(X.value, dtype=np.float64)
    return (Xv + Xv.T) / 2.0, status, secs
