"""``elora tune``: Ray Tune chooses the number of groups m and boosting steps b.

One trial per (m[, λ]) from a grid (basic variant generation); each trial partitions the
tasks into m groups with the same clustering as the cluster stage, then runs the estimated
Algorithm 2 (:mod:`.estimated`) and reports after every boosting step, which is ASHA's time
attribute — a trial whose estimated validation loss lags stops early. Needs only the
affinity matrix and the features, so the whole search takes seconds to a minute.

Writes ``tune/trials.csv`` (one row per trial and step), ``tune/best.json`` and
``plots/tune_objective.png`` (estimated validation loss vs m, one line per b).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..artifacts import read_affinity
from ..cluster.kernel import scaling_for
from ..cluster.select import cluster_tasks
from ..config import RunConfig
from ..errors import ConfigError
from ..estimate.stage import l2_rule, load_estimation_features
from ..io import write_json, write_text
from ..layout import RunLayout
from ..raysession import ensure_ray
from .estimated import TaskFeatureArrays, iter_estimated_path

log = logging.getLogger(__name__)
METRIC = "val_loss"


def estimated_trial(config: dict, names: list[str], affinity: np.ndarray, feats: dict, settings: dict) -> None:
    """Ray Tune function trainable: cluster into ``config['m']`` groups, then report the
    estimated objective after each boosting step."""
    from ray import tune

    m = int(config["m"])
    if m == 1:
        groups, density = [list(names)], float("nan")
    else:
        res = cluster_tasks(affinity, names, num_groups=m, solver=settings["solver"], seed=settings["seed"],
                            local_scaling=settings["local_scaling"])
        groups, density = res.groups, float(res.score)
    best = float("inf")
    for snap in iter_estimated_path(
        feats, groups, settings["max_boost_steps"], l2=config.get("l2", settings["l2"]),
        boost_l2=settings["boost_l2"], step_size=settings["step_size"], line_search=settings["line_search"],
    ):
        best = min(best, snap["val_loss"])
        tune.report({
            "boost_steps": snap["boost_steps"], METRIC: snap["val_loss"], "val_accuracy": snap["val_accuracy"],
            "train_loss": snap["train_loss"], "best_val_loss": best, "density": density,
        })


def _pinned_calibration(cfg: RunConfig, run: Path) -> dict:
    """The config for validation trials with the surrogate's calibration constant resolved here, once:
    trials run in other processes (maybe other nodes, another user cache) and must see the parent's
    estimate as current."""
    from ..estimate.calibration import calibration_constant

    data = cfg.model_dump(mode="json")
    data["estimate"]["calibration"] = calibration_constant(cfg, run)[0]
    return data


def tune_stage(cfg: RunConfig, run_dir: Path, progress: bool = True, runner: Callable[..., dict] | None = None) -> dict:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    run = Path(run_dir)
    t = cfg.tune
    names, affinity = read_affinity(run)
    n = len(names)
    lo, hi = t.min_groups, min(t.max_groups, n)
    if lo > hi:
        raise ConfigError(f"tune.min_groups={t.min_groups} exceeds min(tune.max_groups, tasks)={hi}")
    feat_names, raw = load_estimation_features(run)
    if sorted(feat_names) != sorted(names):
        raise ConfigError(f"{RunLayout(run).affinity} and the features disagree on the tasks: rerun `elora estimate`")
    feats = {k: TaskFeatureArrays(*v) for k, v in raw.items()}
    settings = {
        "solver": cfg.cluster.solver, "seed": cfg.seed, "max_boost_steps": t.max_boost_steps, "l2": l2_rule(cfg, run)[0],
        "local_scaling": scaling_for(cfg.estimate.affinity, cfg.cluster.local_scaling),
        "boost_l2": cfg.boost.l2, "step_size": cfg.boost.step_size, "line_search": cfg.boost.line_search,
    }
    space: dict = {"m": tune.grid_search(list(range(lo, hi + 1)))}
    if t.l2:
        space["l2"] = tune.grid_search(list(t.l2))
    ensure_ray(cfg.ray)
    scheduler = (
        ASHAScheduler(time_attr="boost_steps", max_t=max(1, t.max_boost_steps), grace_period=min(t.grace_period, max(1, t.max_boost_steps)))
        if t.scheduler == "asha" and t.max_boost_steps > 0 else FIFOScheduler()
    )
    if t.objective == "validation":
        if t.l2:
            raise ConfigError("tune.l2 only applies to the estimated objective (the real one trains with estimate.l2 fixed)")
        from .validation import validation_trial

        if runner is None:
            raise ValueError("tune.objective=validation trains the pipeline in every trial: pass runner="
                             "elora_ray.pipeline.run_stages (elora_ray.run_stage('tune', ...) does)")
        from ..train.runner import resolve_use_gpu
        from .validation import trial_bundles

        pgf = tune.PlacementGroupFactory(trial_bundles(cfg, resolve_use_gpu(cfg)))
        trainable = tune.with_resources(
            tune.with_parameters(validation_trial, run_dir=str(run.resolve()), cfg_data=_pinned_calibration(cfg, run),
                                 max_boost_steps=t.max_boost_steps, runner=runner),
            pgf,
        )
    else:
        trainable = tune.with_resources(
            tune.with_parameters(estimated_trial, names=names, affinity=affinity, feats=feats, settings=settings),
            {"cpu": t.cpus_per_trial},
        )
    t0 = time.perf_counter()
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(metric=METRIC, mode="min", scheduler=scheduler),
        run_config=tune.RunConfig(
            name=t.objective, storage_path=str((RunLayout(run).tune / "ray_tune").resolve()), verbose=0,
        ),
    )
    results = tuner.fit()
    seconds = time.perf_counter() - t0
    rows = []
    for r in results:
        if r.error is not None:
            raise ConfigError(f"tune trial {r.config} failed: {r.error}")
        hist = r.metrics_dataframe
        for _, h in hist.iterrows():
            rows.append({
                "m": int(r.config["m"]), "l2": float(r.config["l2"]) if "l2" in r.config else (float(cfg.estimate.l2) if cfg.estimate.l2 != "auto" else float("nan")), "b": int(h["boost_steps"]),
                "val_loss": float(h[METRIC]), "val_accuracy": float(h["val_accuracy"]), "train_loss": float(h["train_loss"]),
                "density": float(h["density"]), "stopped_at": int(hist["boost_steps"].max()),
            })
    table = pd.DataFrame(rows).sort_values(["m", "l2", "b"]).reset_index(drop=True)
    best_row = table.loc[table["val_loss"].idxmin()]
    m_best = int(best_row["m"])
    groups = [list(names)] if m_best == 1 else cluster_tasks(
        affinity, names, num_groups=m_best, solver=cfg.cluster.solver, seed=cfg.seed,
        local_scaling=settings["local_scaling"]).groups
    best = {
        "m": int(best_row["m"]), "b": int(best_row["b"]), "l2": None if pd.isna(best_row["l2"]) else float(best_row["l2"]),
        "val_loss": float(best_row["val_loss"]), "val_accuracy": float(best_row["val_accuracy"]),
        "estimated_val_loss": float(best_row["val_loss"]) if t.objective == "estimated" else None,
        "estimated_val_accuracy": float(best_row["val_accuracy"]) if t.objective == "estimated" else None,
        "groups": groups, "objective": t.objective, "trials": len(results),
        "seconds": round(seconds, 2),
        "overrides": [f"cluster.num_groups={int(best_row['m'])}", f"boost.steps={int(best_row['b'])}"],
    }
    out = RunLayout(run).tune
    write_text(out / "trials.csv", table.to_csv(index=False, float_format="%.6g"))
    write_json(out / "best.json", best)
    plot_tune(table, run / "plots" / "tune_objective.png", t.objective)
    from ..observe import MetricsReporter, sync_mlflow

    for (m, l2), trial in table.groupby(["m", "l2"], dropna=False):
        scope = f"tune/{t.objective}/m{int(m)}" + (f"_l2_{l2:g}" if table["l2"].nunique() > 1 else "")
        with MetricsReporter(run, scope, cfg.report_to) as rep:
            for _, r in trial.iterrows():
                rep.log({"val_loss": r["val_loss"], "val_accuracy": r["val_accuracy"], "train_loss": r["train_loss"]}, int(r["b"]))
    sync_mlflow(run, cfg)
    log.info("tune (%s objective): %d trials in %.1fs; best m=%d, b=%d (validation loss %.4f); use --set %s",
             t.objective, len(results), seconds, best["m"], best["b"], best["val_loss"], " --set ".join(best["overrides"]))
    return best


def plot_tune(table: pd.DataFrame, path: Path, objective: str = "estimated") -> Path:
    import os

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    first = table["l2"].iloc[0]
    base = table[table["l2"].isna()] if pd.isna(first) else table[table["l2"] == first]
    for b, sub in base.groupby("b"):
        ax.plot(sub["m"], sub["val_loss"], marker="o", label=f"b = {b}")
    best = table.loc[table["val_loss"].idxmin()]
    ax.scatter([best["m"]], [best["val_loss"]], s=160, marker="*", color="black", zorder=5, label="best")
    ax.set_xlabel("number of groups m")
    what = "estimated validation loss" if objective == "estimated" else "validation loss (trained ensemble)"
    ax.set_ylabel(f"{what} (mean over tasks)")
    ax.set_title(f"Ray Tune: {objective} objective vs m and boosting steps b")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path
