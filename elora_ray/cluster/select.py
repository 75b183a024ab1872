"""Cluster tasks into groups: SDP relaxation + rounding, choosing the number of groups, with a spectral fallback."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .kernel import local_scaling as local_scaling_kernel
from .objective import (
    average_density,
    canonical_labels,
    labels_to_groups,
    symmetrize,
    trace_objective,
    validate_affinity,
)
from .rounding import Eig, round_fixed_m, round_trace, single_threaded, spectral_eig, spectral_partition
from .sdp import SDPSolveError, solve_sdp_info

log = logging.getLogger(__name__)

#: Above this many tasks the SDP is skipped for the spectral fallback. Measured here (2 shared CPU cores,
#: SCS, single-threaded, cvxpy compile included), one fixed-m solve takes 0.02-0.04 s at n=20, 0.07-0.3 s at
#: n=50, 0.3-1.8 s at n=100, 0.8-3.8 s at n=150 and 1.8-7.1 s at n=200 (~15 s at n=500); "auto" solves one
#: SDP per m in 2..8 and rounds each, which took 8 s in total at n=100 but 15-33 s at n=150.
#: 100 keeps a whole "auto" selection around 10 s. (CLARABEL is far slower: 0.9-1.9 s at n=50, 18-51 s
#: at n=100, and at n=200 it was killed after 2 minutes at 22 GB of memory.)
DEFAULT_MAX_SDP_TASKS = 100
#: Above this many tasks CLARABEL (interior point) needs minutes and many GB; a warning suggests SCS.
CLARABEL_WARN_TASKS = 60
#: ``select_m="eigengap"``: eigenvalues below this fraction of the largest count as noise (a drop to them is
#: capped). From a floor sweep on the stored runs of the 16 real planted suites and the synthetic scale suites
#: (a scratch analysis, not a benchmark here; the chosen value's results are benchmarks/results/select_m.md): 0 (no floor) lets near-zero eigenvalues make spurious drops (real-suite ARI 0.60); 0.02 and
#: 0.05 tie on the design suites (0.87), 0.02 is better on the held-out ones (0.75 vs 0.66); 0.10 under-splits.
EIGENGAP_FLOOR = 0.02
#: SCS iteration cap used when the caller gives none (typical solves need 200-1500 iterations); a solve
#: that hits it comes back "optimal_inaccurate" and that m falls back to the spectral method.
DEFAULT_SCS_MAX_ITERS = 5000


@dataclass
class ClusterResult:
    """The chosen partition of the tasks, and how it was found."""

    labels: list[int]  # cluster index per task, clusters numbered 0..m-1 by first appearance
    groups: list[list[str]]  # task names per cluster
    m: int
    score: float  # average density of the chosen partition
    method: str  # "sdp" | "sdp-trace" | "spectral-fallback"
    reason: str | None  # why a fallback was used, else None
    candidates: list[dict] = field(default_factory=list)  # one row per m tried
    local_scaling: int | None = None  # neighbour rank of the self-tuning kernel the partition used, if any

    def to_dict(self) -> dict:
        """Plain-JSON-types dict of every field."""
        return asdict(self)


def _validate(
    T: object, names: Sequence[str], num_groups: int | str, max_groups: int, trace_weight: float | None,
    solver: str, max_sdp_tasks: int,
) -> np.ndarray:
    """Check every argument of :func:`cluster_tasks`; return T as a float array or raise ``ValueError``."""
    T = validate_affinity(T)
    n = T.shape[0]
    if isinstance(names, str) or len(names) != n:
        got = "a single string" if isinstance(names, str) else f"{len(names)} names"
        raise ValueError(f"names must list one name per task: the affinity matrix has {n} tasks, got {got}")
    if len(set(map(str, names))) != n:
        dup = sorted({str(x) for x in names if list(map(str, names)).count(str(x)) > 1})
        raise ValueError(f"task names must be unique; repeated: {dup}")
    if isinstance(num_groups, str):
        if num_groups != "auto":
            raise ValueError(f"num_groups must be an integer or 'auto'; got {num_groups!r}")
    elif isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)):
        raise ValueError(f"num_groups must be an integer or 'auto'; got {num_groups!r}")
    elif not 1 <= num_groups <= n:
        raise ValueError(f"num_groups must be between 1 and the number of tasks ({n}); got {num_groups}")
    if isinstance(max_groups, bool) or not isinstance(max_groups, (int, np.integer)) or max_groups < 1:
        raise ValueError(f"max_groups must be a positive integer; got {max_groups!r}")
    if trace_weight is not None:
        if num_groups != "auto":
            raise ValueError("give either num_groups or trace_weight, not both (trace_weight chooses m itself)")
        if not np.isfinite(trace_weight):
            raise ValueError(f"trace_weight must be a finite number; got {trace_weight}")
    import cvxpy as cp

    if solver.upper() not in cp.installed_solvers():
        raise ValueError(f"solver {solver!r} is not installed for cvxpy; installed: {cp.installed_solvers()}")
    if max_sdp_tasks < 0:
        raise ValueError(f"max_sdp_tasks must be >= 0; got {max_sdp_tasks}")
    return T


def _fixed_m(S: np.ndarray, m: int, *, use_sdp: bool, reason: str | None, solver: str,
             max_iters: int | None, seed: int, eig: Eig | None) -> tuple[np.ndarray, dict, str | None]:
    """Partition into exactly m groups; return labels, the candidate row and the fallback reason (or None)."""
    t0 = time.perf_counter()
    status, rounding = "skipped", None
    if use_sdp:
        try:
            X, status, solve_s = solve_sdp_info(S, num_groups=m, solver=solver, max_iters=max_iters)
            lab, rounding = round_fixed_m(S, X, m, seed=seed, eig=eig)
            row = {"m": m, "score": average_density(S, lab), "solve_s": solve_s, "method": "sdp",
                   "status": status, "rounding": rounding}
            return lab, row, None
        except SDPSolveError as exc:
            status = exc.status
            reason = f"SDP solve failed for m={m} ({exc}); used the spectral method instead"
            log.warning("task clustering: %s", reason)
    lab, rounding = spectral_partition(S, m, seed=seed, eig=eig)
    row = {"m": m, "score": average_density(S, lab), "solve_s": time.perf_counter() - t0,
           "method": "spectral-fallback", "status": status, "rounding": rounding}
    return lab, row, reason


def _trace_mode(S: np.ndarray, trace_weight: float, *, use_sdp: bool, reason: str | None, solver: str,
                max_iters: int | None, max_groups: int, seed: int,
                progress: bool) -> tuple[np.ndarray, list[dict], str, str | None]:
    """Trace-regularised SDP + threshold rounding; falls back to spectral m-selection on the same objective."""
    n = S.shape[0]
    if use_sdp:
        try:
            X, status, solve_s = solve_sdp_info(S, trace_weight=trace_weight, solver=solver, max_iters=max_iters)
            lab, rounding = round_trace(S, X, trace_weight, seed=seed)
            row = {"m": int(lab.max()) + 1, "score": average_density(S, lab), "solve_s": solve_s,
                   "method": "sdp-trace", "status": status, "rounding": rounding,
                   "objective": trace_objective(S, lab, trace_weight), "trace_X": float(np.trace(X))}
            return lab, [row], "sdp-trace", None
        except SDPSolveError as exc:
            reason = f"trace-regularised SDP solve failed ({exc}); used the spectral method instead"
            log.warning("task clustering: %s", reason)
    best, rows = None, []
    ms = range(1, min(max_groups, n) + 1)
    eig = spectral_eig(S, ms[-1])
    for m in tqdm(ms, desc="cluster: m candidates", disable=not progress):
        lab, row, _ = _fixed_m(S, m, use_sdp=False, reason=None, solver=solver, max_iters=max_iters, seed=seed,
                               eig=eig)
        row["objective"] = trace_objective(S, lab, trace_weight)
        rows.append(row)
        if best is None or row["objective"] > best[1] + 1e-9 * (1 + abs(best[1])):
            best = (lab, row["objective"])
    return best[0], rows, "spectral-fallback", reason


def block_means(T: np.ndarray, labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """The block-constant model of symmetrised T's off-diagonal entries under a partition (diagonal 0)."""
    T = symmetrize(T)
    lab = canonical_labels(labels)
    n = lab.size
    m = int(lab.max()) + 1
    V = np.zeros((n, m))
    V[np.arange(n), lab] = 1.0
    off = 1.0 - np.eye(n)
    sums = V.T @ (T * off) @ V
    counts = V.T @ off @ V
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return (V @ means @ V.T) * off


def heldout_errors(fit_on: np.ndarray, labels: Sequence[int] | np.ndarray, check_on: np.ndarray) -> np.ndarray:
    """Squared errors of the block means of ``fit_on`` (under ``labels``) against ``check_on``, off-diagonal.

    Too few groups miss real structure; too many fit the noise of ``fit_on``, which the independent
    ``check_on`` does not share, so the error is smallest near the true number of groups.
    """
    n = fit_on.shape[0]
    off = ~np.eye(n, dtype=bool)
    return (block_means(fit_on, labels) - symmetrize(check_on))[off] ** 2


def heldout_error(fit_on: np.ndarray, labels: Sequence[int] | np.ndarray, check_on: np.ndarray) -> float:
    """Mean of :func:`heldout_errors`."""
    return float(heldout_errors(fit_on, labels, check_on).mean())


def _heldout_mode(S: np.ndarray, halves: tuple[np.ndarray, np.ndarray], names: Sequence[str], *, use_sdp: bool,
                  reason: str | None, solver: str, max_iters: int | None, max_groups: int, seed: int,
                  progress: bool) -> tuple[np.ndarray, list[dict], str, str | None]:
    """Choose m in 1..max_groups by held-out error between the two halves; partition S at that m."""
    n = S.shape[0]
    A, B = (symmetrize(validate_affinity(h)) for h in halves)
    if A.shape != S.shape or B.shape != S.shape:
        raise ValueError(f"affinity halves must be {S.shape} like the affinity; got {A.shape} and {B.shape}")
    ms = list(range(1, min(max_groups, n) + 1))
    eigs = {id(M): spectral_eig(M, ms[-1]) for M in (S, A, B)}
    rows: list[dict] = []
    found: list[np.ndarray] = []
    why = reason
    for m in tqdm(ms, desc="cluster: m candidates (held-out)", disable=not progress):
        if m == 1:
            lab = lab_a = lab_b = np.zeros(n, dtype=np.int64)
            row = {"m": 1, "score": average_density(S, lab), "solve_s": 0.0, "method": "trivial", "status": "optimal",
                   "rounding": None}
        else:
            kw = dict(use_sdp=use_sdp, reason=reason, solver=solver, max_iters=max_iters, seed=seed)
            lab_a, _, _ = _fixed_m(A, m, eig=eigs[id(A)], **kw)
            lab_b, _, _ = _fixed_m(B, m, eig=eigs[id(B)], **kw)
            lab, row, w = _fixed_m(S, m, eig=eigs[id(S)], **kw)
            why = w or why
        errs = (heldout_errors(A, lab_a, B) + heldout_errors(B, lab_b, A)) / 2
        row["heldout_error"] = float(errs.mean())
        row["heldout_se"] = float(errs.std(ddof=1) / np.sqrt(errs.size)) if errs.size > 1 else 0.0
        rows.append(row)
        found.append(lab)
    # One-standard-error rule (as in cross-validation): the smallest m whose held-out error is within
    # one standard error of the minimum. Past the true m the error curve is flat up to noise (sub-
    # structure within a dataset), and the smaller m is the one the data supports.
    low = min(range(len(rows)), key=lambda r: rows[r]["heldout_error"])
    bar = rows[low]["heldout_error"] + rows[low]["heldout_se"]
    pick = next(r for r in range(len(rows)) if rows[r]["heldout_error"] <= bar)
    for r, row in enumerate(rows):
        row["selected"] = r == pick
    best = (found[pick], rows[pick])
    method = best[1]["method"] if best[1]["method"] != "trivial" else ("sdp" if use_sdp else "spectral-fallback")
    return best[0], rows, method, why


def eigengap_spectrum(T: np.ndarray) -> np.ndarray:
    """Eigenvalues (descending) of the double-centred affinity with each diagonal entry set to its row's maximum.

    A task's similarity with itself (1 for a cosine) is not what another sample of the same data would
    score, which sampling noise lowers; its nearest neighbour is the closest stand-in, so parts of one
    dataset form a near-constant block. Double centring removes what every task shares (the common
    direction of all the loss-gradients), so m well-separated groups leave m − 1 large eigenvalues.
    """
    S = symmetrize(T)
    n = S.shape[0]
    M = S.copy()
    if n > 1:
        np.fill_diagonal(M, np.where(~np.eye(n, dtype=bool), S, -np.inf).max(axis=1))
    J = np.eye(n) - 1.0 / n
    return np.sort(np.linalg.eigvalsh(J @ M @ J))[::-1]


def eigengap_choice(T: np.ndarray, max_groups: int, floor: float = EIGENGAP_FLOOR) -> tuple[int, list[dict]]:
    """m in 2..max_groups after the largest relative drop λ_{m−1} / λ_m of :func:`eigengap_spectrum`.

    Scale-free (the ratio, not the difference, so a dominant first group does not hide the others);
    eigenvalues below ``floor``·λ_1 count as noise, so a drop to them is capped at λ / (floor·λ_1).
    Returns m (1 when there is no positive eigenvalue: no structure beyond what all tasks share) and one
    row per m with the eigenvalue and ratio that decided it.
    """
    n = np.asarray(T).shape[0]
    top = min(max_groups, n)
    if top < 2:
        return 1, [{"m": 1, "selected": True}]
    ev = eigengap_spectrum(T)
    if ev[0] <= 0:
        return 1, [{"m": 1, "eigenvalue": float(ev[0]), "selected": True}]
    lo = floor * ev[0]
    ratios = [float(ev[k - 1] / max(ev[k], lo)) for k in range(1, top)]  # ratio for m = k + 1
    pick = int(np.argmax(ratios)) + 2
    rows = [{"m": k + 1, "eigenvalue": float(ev[k - 1]), "gap_ratio": ratios[k - 1], "selected": k + 1 == pick}
            for k in range(1, top)]
    return pick, rows


def _eigengap_mode(S: np.ndarray, *, use_sdp: bool, reason: str | None, solver: str, max_iters: int | None,
                   max_groups: int, seed: int) -> tuple[np.ndarray, list[dict], str, str | None]:
    """Choose m by :func:`eigengap_choice`, partition S at that m only."""
    m, rows = eigengap_choice(S, max_groups)
    if m == 1:
        return np.zeros(S.shape[0], dtype=np.int64), rows, "sdp" if use_sdp else "spectral-fallback", reason
    lab, row, why = _fixed_m(S, m, use_sdp=use_sdp, reason=reason, solver=solver, max_iters=max_iters, seed=seed,
                             eig=spectral_eig(S, m))
    for r in rows:
        if r["m"] == m:
            r.update({k: v for k, v in row.items() if k != "m"})
    return lab, rows, row["method"], why or reason


def resolve_select_m(select_m: str, halves_independent: bool) -> str:
    """``auto`` → ``heldout`` when the two affinity halves are independent estimates, else ``eigengap``.

    The held-out criterion needs halves whose noise is independent. Encoder runs fit each task's probed
    head on all of its training samples, which ties the two halves together (their deviations cancel in
    the directions the probe fitted): on the real planted suites, parts of one dataset differ by 0.33-0.83
    of what independent samples would, and the held-out error then grows with m (under-splitting).
    Decoders (no probe) and federated clients keep independent halves.
    """
    if select_m not in SELECT_M_CHOICES:
        raise ValueError(f"select_m must be one of {SELECT_M_CHOICES}; got {select_m!r}")
    if select_m == "auto":
        return "heldout" if halves_independent else "eigengap"
    return select_m


SELECT_M_CHOICES = ("auto", "eigengap", "heldout", "density")


@single_threaded  # see rounding.single_threaded for the measurements behind this
def cluster_tasks(
    T: np.ndarray,
    names: Sequence[str],
    *,
    num_groups: int | str = "auto",
    max_groups: int = 8,
    trace_weight: float | None = None,
    solver: str = "SCS",
    max_sdp_tasks: int = DEFAULT_MAX_SDP_TASKS,
    seed: int = 0,
    progress: bool = False,
    max_iters: int | None = None,
    halves: tuple[np.ndarray, np.ndarray] | None = None,
    select_m: str = "auto",
    halves_independent: bool = True,
    local_scaling: int | None = None,
) -> ClusterResult:
    """Partition n tasks into groups maximising the average intra-cluster density of the affinity ``T``.

    ``num_groups``: an int fixes m; ``"auto"`` tries every m in 2..min(max_groups, n) (n == 1 gives m = 1)
    and keeps the best average density, ties going to the smaller m. ``trace_weight`` selects the paper's
    trace-regularised SDP instead, where m comes out of the rounding (``num_groups`` must stay "auto").
    With more than ``max_sdp_tasks`` tasks, or when the solver fails or is inaccurate, the spectral
    fallback is used: a warning is logged and ``method``/``reason`` of the result say so.
    ``max_iters`` caps solver iterations (default: 5000 for SCS, the solver's own default otherwise).
    ``select_m="heldout"`` with ``halves`` (two independent estimates of T, e.g. from two halves of every
    task's samples) chooses m in 1..max_groups instead by held-out error: the partition of one half, as a
    block-constant model of its off-diagonal entries, predicts the other half (both ways; see
    :func:`heldout_errors`); the smallest m within one standard error of the minimum wins. Without halves
    it falls back to the eigengap criterion. ``select_m="eigengap"`` chooses m in 2..max_groups by the
    largest relative drop in the spectrum of the double-centred affinity (:func:`eigengap_choice`).
    ``select_m="auto"`` (default) is ``heldout`` when ``halves`` are given and ``halves_independent``,
    else ``eigengap`` (see :func:`resolve_select_m`). ``select_m="density"``: the largest average density.
    """
    T = _validate(T, names, num_groups, max_groups, trace_weight, solver, max_sdp_tasks)
    rule = resolve_select_m(select_m, halves_independent and halves is not None)
    if rule == "heldout" and halves is None:
        rule = "eigengap"
    S = symmetrize(T)
    n = S.shape[0]
    scaled = None
    if local_scaling is not None and trace_weight is None and not (num_groups == "auto" and rule == "heldout" and n > 2):
        S, scaled = local_scaling_kernel(S, local_scaling), int(local_scaling)
    if max_iters is None and solver.upper() == "SCS":
        max_iters = DEFAULT_SCS_MAX_ITERS
    use_sdp, reason = True, None
    if solver.upper() == "CLARABEL" and CLARABEL_WARN_TASKS < n <= max_sdp_tasks:
        log.warning("task clustering: CLARABEL on %d tasks may take minutes and many GB of memory "
                    "(measured ~20-50 s per SDP at n=100); SCS is much faster", n)
    if n > max_sdp_tasks:
        use_sdp = False
        reason = (f"{n} tasks > max_sdp_tasks={max_sdp_tasks}: the SDP would take too long, "
                  "used spectral embedding + k-means + local search instead")
        log.warning("task clustering: %s", reason)

    if trace_weight is not None:
        lab, rows, method, reason = _trace_mode(S, float(trace_weight), use_sdp=use_sdp, reason=reason,
                                                solver=solver, max_iters=max_iters, max_groups=max_groups,
                                                seed=seed, progress=progress)
    elif num_groups == "auto" and rule == "heldout" and n > 2:
        lab, rows, method, reason = _heldout_mode(S, halves, names, use_sdp=use_sdp, reason=reason, solver=solver,
                                                  max_iters=max_iters, max_groups=max_groups, seed=seed,
                                                  progress=progress)
    elif num_groups == "auto" and rule == "eigengap" and n > 2:
        lab, rows, method, reason = _eigengap_mode(S, use_sdp=use_sdp, reason=reason, solver=solver,
                                                   max_iters=max_iters, max_groups=max_groups, seed=seed)
    else:
        ms = [int(num_groups)] if num_groups != "auto" else list(range(2, min(max_groups, n) + 1)) or [1]
        best: tuple[np.ndarray, dict, str | None] | None = None
        rows = []
        eig = spectral_eig(S, max(ms))
        for m in tqdm(ms, desc="cluster: m candidates", disable=not progress or len(ms) < 2):
            lab_m, row, why = _fixed_m(S, m, use_sdp=use_sdp, reason=reason, solver=solver,
                                       max_iters=max_iters, seed=seed, eig=eig)
            rows.append(row)
            if best is None or row["score"] > best[1]["score"] + 1e-9 * (1 + abs(best[1]["score"])):
                best = (lab_m, row, why)
        lab, method, reason = best[0], best[1]["method"], best[2]

    lab = canonical_labels(lab)
    result = ClusterResult(labels=[int(x) for x in lab], groups=labels_to_groups(lab, names),
                           m=int(lab.max()) + 1, score=average_density(S, lab), method=method,
                           reason=reason, candidates=rows, local_scaling=scaled)
    log.info("task clustering: %d tasks -> %d groups (method %s, average density %.4g)",
             n, result.m, method, result.score)
    return result
