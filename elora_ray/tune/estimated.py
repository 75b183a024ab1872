"""The estimated ensemble objective: Algorithm 2 run entirely in the linearised model, so that
choosing m and b needs no fine-tuning (paper §4: "selecting these parameters takes only a few
seconds, since no fine-tuning is involved").

For a partition into groups, each group's fine-tuned adapter is estimated by the same
surrogate regression as the estimate stage, on the group's training features:
h_G(s) = h0_s + g̃_sᵀ ŵ_G. Boosting steps then follow the real procedure in that space: pick
the group with the highest estimated training loss, fit the residual 1 − σ(h) by ridge on
g̃ (exactly the linearized learner), add it with coefficient η·ρ (ρ by line search). After
each step the objective is every task's estimated validation loss / accuracy under its own
group's ensemble, averaged over tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit

from ..estimate.calibration import resolve_l2
from ..estimate.surrogate import fit_surrogate
from ..train.linearized import fit_residual


@dataclass
class TaskFeatureArrays:
    train_g: np.ndarray
    train_h0: np.ndarray
    val_g: np.ndarray
    val_h0: np.ndarray


def _mean_loss(h: np.ndarray) -> float:
    return float(-log_expit(h).mean()) if len(h) else float("nan")


def estimated_path(feats: dict[str, TaskFeatureArrays], groups: Sequence[Sequence[str]], steps: int, **kw) -> list[dict]:
    """Estimated objective after 0, 1, …, ``steps`` boosting steps (one dict per step)."""
    return list(iter_estimated_path(feats, groups, steps, **kw))


def iter_estimated_path(
    feats: dict[str, TaskFeatureArrays],
    groups: Sequence[Sequence[str]],
    steps: int,
    *,
    l2: float | dict = 1e-3,
    boost_l2: float = 1e-3,
    step_size: float = 0.1,
    line_search: bool = True,
    max_iter: int = 200,
) -> Iterator[dict]:
    """Yields the estimated objective after 0, 1, …, ``steps`` boosting steps."""
    train_h: list[dict[str, np.ndarray]] = []
    val_h: list[dict[str, np.ndarray]] = []
    for g in groups:
        gt = np.concatenate([feats[t].train_g for t in g]).astype(np.float64)
        h0 = np.concatenate([feats[t].train_h0 for t in g]).astype(np.float64)
        w = fit_surrogate(gt, h0, l2=resolve_l2(l2, len(h0)), max_iter=max_iter).w
        train_h.append({t: feats[t].train_h0 + feats[t].train_g.astype(np.float64) @ w for t in g})
        val_h.append({t: feats[t].val_h0 + feats[t].val_g.astype(np.float64) @ w for t in g})

    def snapshot(step: int, chosen: int | None, rho: float | None) -> dict:
        per_task_loss = {t: _mean_loss(v[t]) for v in val_h for t in v}
        per_task_acc = {t: float((v[t] > 0).mean()) for v in val_h for t in v}
        group_train = [_mean_loss(np.concatenate(list(h.values()))) for h in train_h]
        return {
            "boost_steps": step,
            "val_loss": float(np.mean(list(per_task_loss.values()))),
            "val_accuracy": float(np.mean(list(per_task_acc.values()))),
            "train_loss": float(np.mean(group_train)),
            "group_train_losses": group_train,
            "boosted_group": chosen,
            "rho": rho,
        }

    yield snapshot(0, None, None)
    for step in range(1, steps + 1):
        losses = [_mean_loss(np.concatenate(list(h.values()))) for h in train_h]
        j = int(np.argmax(losses))
        g = list(groups[j])
        gt = np.concatenate([feats[t].train_g for t in g]).astype(np.float64)
        h = np.concatenate([train_h[j][t] for t in g])
        w = fit_residual(gt, 1.0 - expit(h), boost_l2)
        delta = gt @ w
        if line_search:
            res = minimize_scalar(lambda r: _mean_loss(h + r * delta), bounds=(0.0, 100.0), method="bounded",
                                  options={"xatol": 1e-3})
            rho = float(res.x) if _mean_loss(h + res.x * delta) <= _mean_loss(h) else 0.0
        else:
            rho = 1.0
        c = step_size * rho
        for t in g:
            train_h[j][t] = train_h[j][t] + c * (feats[t].train_g.astype(np.float64) @ w)
            val_h[j][t] = val_h[j][t] + c * (feats[t].val_g.astype(np.float64) @ w)
        yield snapshot(step, j, rho)
