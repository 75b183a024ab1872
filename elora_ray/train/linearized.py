"""A boosting learner without training: ridge regression of the residual on projected gradients.

Around θ* the learner's gold log-odds change is h_X(s) − h_θ*(s) ≈ g_sᵀ(X − θ*), and with the
seeded JL matrix P (the one featurisation used), X − θ* = P w gives g_sᵀ P w = g̃_sᵀ w exactly.
So fitting the residual r_s = 1 − p_s (paper §3.2) is the ridge problem

    ŵ = argmin_w  mean_s (r_s − g̃_sᵀ w)² + λ · mean‖g̃‖² · ‖w‖²

in d dimensions, and the learner is the adapter θ* + P ŵ (only the output-side layers that
were differentiated move; task heads stay at the probe). It is a real PEFT adapter: saved,
loaded and run like any other, and its actual outputs (not the linear prediction) are what
the ensemble adds. The step record reports how well the linear prediction matched them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import RunConfig
from ..errors import DataError
from ..featurize.projection import JLProjector
from ..featurize.store import read_features, read_manifest
from ..featurize.update_sketch import PerSampleUpdateSketch, lora_sites, set_low_rank_update
from ..featurize.worker import gradient_layers_for, projection_seed


def fit_residual(g: np.ndarray, r: np.ndarray, l2: float) -> np.ndarray:
    """Ridge solution w of mean (r − g w)² + l2·mean‖g‖²·‖w‖² (normal equations, float64)."""
    g = np.asarray(g, np.float64)
    r = np.asarray(r, np.float64)
    n, d = g.shape
    if n == 0:
        raise ValueError("no samples to fit the residual on")
    scale = float((g**2).sum(1).mean()) or 1.0
    a = g.T @ g / n + (l2 * scale + 1e-12) * np.eye(d)
    return np.linalg.solve(a, g.T @ r / n)


def residual_features(run_dir: Path, tasks: list[str], residuals: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(g̃ [N, d], r [N]) of the training samples of ``tasks``, joined by sample id."""
    feats = read_features(run_dir, "train", tasks)
    lookup = dict(zip(residuals["sample_id"].astype(str), residuals["residual"].astype(float)))
    gs, rs = [], []
    for name in tasks:
        f = feats[name]
        missing = [s for s in f.sample_ids if s not in lookup]
        if missing:
            raise DataError(f"boosting residuals: no row for {len(missing)} {name} samples (e.g. {missing[0]!r})")
        gs.append(f.grad)
        rs.append(np.array([lookup[s] for s in f.sample_ids]))
    return np.concatenate(gs), np.concatenate(rs)


def _check_feature_size(p: int, gradient_parameters: int, what: str) -> None:
    if p != gradient_parameters:
        raise DataError(
            f"the adapter has {p} {what} but the features were computed for "
            f"{gradient_parameters}: rerun `elora featurize` for this configuration"
        )


def apply_linearized_step(cfg: RunConfig, peft_model: torch.nn.Module, w: np.ndarray, gradient_parameters: int) -> float:
    """Add P w to the differentiated adapter layers (in featurisation order); returns ‖P w‖.
    (``featurize.gradient: full_rank`` features: :func:`apply_full_rank_step`.)"""
    layers = gradient_layers_for(peft_model)
    p = sum(g.size for g in layers)
    _check_feature_size(p, gradient_parameters, "differentiated parameters")
    f = cfg.featurize
    proj = JLProjector(p, f.dim, projection_seed(cfg), f.projection, f.block_rows, f.cache_limit_mb)
    delta = proj.back_project(torch.from_numpy(np.asarray(w, np.float32)))
    offset = 0
    with torch.no_grad():
        for g in layers:
            m = g.module
            n = m.weight.numel()
            m.weight.add_(delta[offset : offset + n].view_as(m.weight).to(m.weight.device, m.weight.dtype))
            offset += n
            if m.bias is not None:
                m.bias.add_(delta[offset : offset + m.bias.numel()].view_as(m.bias).to(m.bias.device, m.bias.dtype))
                offset += m.bias.numel()
    for p_ in peft_model.parameters():
        p_.requires_grad_(False)
    for g in layers:  # what the saved adapter counts as trainable
        for p_ in g.module.parameters():
            p_.requires_grad_(True)
    return float(delta.norm())


def apply_full_rank_step(cfg: RunConfig, peft_model: torch.nn.Module, w: np.ndarray, gradient_parameters: int) -> dict:
    """Move each LoRA site (B = 0 at θ*) to the rank-r part of ΔM = R W Qᵀ/√d; report ‖ΔM‖ and the share kept."""
    sites = lora_sites(peft_model)
    _check_feature_size(sum(s.size for s in sites), gradient_parameters, "update-matrix entries")
    sketch = PerSampleUpdateSketch(sites, cfg.featurize.dim, projection_seed(cfg))
    deltas = sketch.update_matrices(torch.from_numpy(np.asarray(w, np.float32)))
    sq, kept_sq = 0.0, 0.0
    for site, delta in zip(sites, deltas):
        share = set_low_rank_update(site, delta.to(site.output_side.weight.device))
        n2 = float((delta.double() ** 2).sum())
        sq += n2
        kept_sq += share * n2
    for p_ in peft_model.parameters():
        p_.requires_grad_(False)
    for site in sites:  # what the saved adapter counts as trainable
        for p_ in (*site.input_side.parameters(), *site.output_side.parameters()):
            p_.requires_grad_(True)
    return {"step_norm": sq**0.5, "rank_r_share": kept_sq / sq if sq > 0 else 1.0}


def linearized_learner(cfg: RunConfig, run_dir: Path, tasks: list[str], residuals: pd.DataFrame, peft_model) -> dict:
    """Fit ŵ on the group's training residuals and move ``peft_model`` (at θ*) to θ* + P ŵ."""
    g, r = residual_features(run_dir, tasks, residuals)
    w = fit_residual(g, r, cfg.boost.l2)
    pred = g.astype(np.float64) @ w
    ss = float((r**2).sum()) or 1.0  # uncentred: the fit has no intercept
    params = int(read_manifest(run_dir)["gradient_parameters"])
    extra: dict = {}
    if cfg.feature_gradient() == "full_rank":
        extra = apply_full_rank_step(cfg, peft_model, w, params)
        norm = extra.pop("step_norm")
    else:
        norm = apply_linearized_step(cfg, peft_model, w, params)
    return {
        **extra,
        "samples": float(len(r)),
        "residual_mean": float(r.mean()),
        "fit_r2_uncentered": 1.0 - float(((r - pred) ** 2).sum()) / ss,
        "step_norm": norm,
        "w_norm": float(np.linalg.norm(w)),
    }
