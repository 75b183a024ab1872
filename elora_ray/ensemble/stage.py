"""``elora combine``: learn the per-task weights over the group ensembles on validation
outputs (``ensemble.weights``) and save them to ``ensemble/weights.json``."""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

import numpy as np

from ..artifacts import read_prepared
from ..config import RunConfig
from ..io import fingerprint
from ..layout import RunLayout
from .members import group_outputs, load_members, save_weights
from .shrinkage import shrunk_weights
from .weights import combine, fit_task_weights, task_loss

log = logging.getLogger(__name__)


def combine_stage(cfg: RunConfig, run_dir: Path, force: bool = False, progress: bool = True) -> dict:
    run = Path(run_dir)
    members = load_members(run)
    tasks = read_prepared(run)
    names = [t.name for t in tasks]
    num_labels = {t.name: len(t.labels) for t in tasks}
    e = cfg.ensemble
    fp = fingerprint([members.to_dict(), e.model_dump(mode="json")])
    path = RunLayout(run).weights
    if path.is_file() and not force:
        old = json.loads(path.read_text())
        if old.get("fingerprint") == fp:
            log.info("combine: weights already fit for these members, skipping")
            return old
    m = len(members.groups)
    val = [group_outputs(run, members, j, "validation", names, num_labels) for j in range(m)]
    per_task = {name: task_weights(e, val, name, members.group_of(name)) for name in names}
    result = {"method": e.weights, "fingerprint": fp, "groups": [g.tasks for g in members.groups], "tasks": per_task}
    save_weights(run, result)
    mean = {k: float(np.mean([t["validation_loss"][k] for t in per_task.values()])) for k in ("weights", "uniform", "own_group")}
    log.info(
        "combine: %s weights; mean validation loss %.4f (uniform %.4f, own group only %.4f)",
        e.weights, mean["weights"], mean["uniform"], mean["own_group"],
    )
    if e.weights == "shrunk":
        lams = [t["shrinkage"] for t in per_task.values()]
        log.info("combine: shrinkage toward uniform chosen by %d-fold cross-validation: mean %.2f (0 = learned, 1 = uniform)",
                 e.cv_folds, float(np.mean(lams)))
    return result


def task_weights(e, val: list[dict], name: str, own: int) -> dict:
    """Task ``name``'s combination weights over the m groups (``val``: each group's validation outputs)
    and the validation loss under them, under uniform weights and under its own group alone."""
    m = len(val)
    labels = val[own][name].labels
    logits = [v[name].align_to(val[own][name].sample_ids).logits for v in val]
    extra: dict = {}
    if e.weights == "learned":
        alpha = fit_task_weights(logits, labels, own, e.shrink, e.solver)
    elif e.weights == "shrunk":
        fit = shrunk_weights(logits, labels, own, e.shrink, e.solver, folds=e.cv_folds, seed=zlib.crc32(name.encode()))
        alpha = fit.weights
        extra = {"shrinkage": fit.shrinkage, "cv_folds": fit.folds,
                 "cv_loss": {f"{k:g}": round(v, 6) for k, v in fit.cv_loss.items()}}
    elif e.weights == "uniform":
        alpha = np.full(m, 1.0 / m)
    else:
        alpha = np.eye(m)[own]
    losses = {
        label: task_loss(combine(val, {name: list(a)})[name])
        for label, a in (("weights", alpha), ("uniform", np.full(m, 1.0 / m)), ("own_group", np.eye(m)[own]))
    }
    return {
        "own_group": own,
        "weights": [round(float(a), 6) for a in alpha],
        "validation_loss": losses,
        "validation_samples": int(len(labels)),
        **extra,
    }


def weight_matrix(weights: dict) -> dict[str, list[float]]:
    return {name: t["weights"] for name, t in weights["tasks"].items()}
