"""The real objective for ``elora tune``: train the ensemble for (m, b) and measure it on validation.

Each trial works in its own run directory ``<run>/tune/trials/m<m>/`` that *links* the parent
run's data, features and affinity (nothing is recomputed) and then runs the ordinary stages
``cluster → train → boost → combine → evaluate`` with ``cluster.num_groups = m``, no baselines
and ``evaluate.split = validation``. It reports after b = 0, 1, …, ``tune.max_boost_steps``
boosting steps (ASHA's time attribute), each step adding one learner to the previous ones.

Resources: the trial itself needs almost no CPU; the group-training Ray tasks it launches run
inside the trial's placement group (Ray Tune captures child tasks), which reserves
``tune.train_slots`` bundles of ``train.cpus_per_worker`` CPUs. So on 2 cores two trials each
hold one training slot, and a trial's children never wait for CPUs another trial holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from ..config import RunConfig
from ..errors import ConfigError
from ..layout import (
    AFFINITY_COUNTS_FILE,
    AFFINITY_FILE,
    AFFINITY_META_FILE,
    AFFINITY_RAW_FILE,
    CALIBRATION_FILE,
    DATA_DIR,
    EST_DIR,
    FEATURE_DIR,
    HALF_FILES,
    RunLayout,
)

def trial_bundles(cfg: RunConfig, use_gpu: bool) -> list[dict[str, float]]:
    """A validation trial's placement group: bundle 0 hosts the (idle) trial; its training tasks are
    captured into the ``tune.train_slots`` others, each holding what one local-mode adapter job asks
    for (:func:`elora_ray.train.runner.job_resources`: its CPUs, and its GPU when training uses GPUs)."""
    from ..train.runner import job_resources

    if cfg.train.num_workers > 0:
        raise ConfigError("tune.objective=validation trains each trial's adapters inside the trial's placement "
                          "group, one local-mode job per bundle; set train.num_workers=0 for tuning (Ray Train "
                          "worker groups would reserve resources outside it and could wait for each other)")
    job = job_resources(cfg, use_gpu)
    bundle = {"CPU": float(job["num_cpus"]), **({"GPU": float(job["num_gpus"])} if "num_gpus" in job else {})}
    return [{"CPU": 0.01}] + [dict(bundle) for _ in range(cfg.tune.train_slots)]


#: parent-run artifacts a trial reuses through symlinks
SHARED = (DATA_DIR, FEATURE_DIR, EST_DIR, "model.json", AFFINITY_FILE, AFFINITY_META_FILE, AFFINITY_RAW_FILE,
          AFFINITY_COUNTS_FILE, *HALF_FILES, CALIBRATION_FILE)


def trial_dir(run: Path, m: int) -> Path:
    return Path(run) / "tune" / "trials" / f"m{m}"


def link_parent(run: Path, trial: Path) -> None:
    """Make ``trial`` see the parent run's data, features, estimates and affinity (symlinks)."""
    trial.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        src = Path(run) / name
        dst = trial / name
        if src.exists() and not dst.exists():
            os.symlink(os.path.relpath(src.resolve(), trial.resolve()), dst)


def trial_config(cfg: RunConfig, m: int, b: int) -> RunConfig:
    data = cfg.model_dump(mode="json")
    data["cluster"]["num_groups"] = m
    data["boost"]["steps"] = b
    data["baselines"]["methods"] = []
    data["evaluate"]["split"] = "validation"
    return RunConfig.model_validate(data)


def validation_trial(config: dict, run_dir: str, cfg_data: dict, max_boost_steps: int, runner: Callable[..., dict]) -> None:
    """Ray Tune function trainable: train the ensemble for ``config['m']`` groups and report its
    validation loss/accuracy after each boosting step. ``runner`` is the pipeline's
    ``run_stages`` (passed in: a stage never imports the pipeline that runs it)."""
    from ray import tune

    cfg = RunConfig.model_validate(cfg_data)
    m = int(config["m"])
    run = Path(run_dir)
    trial = trial_dir(run, m)
    link_parent(run, trial)
    best = float("inf")
    for b in range(max_boost_steps + 1):
        runner(trial_config(cfg, m, b), trial, until="evaluate")
        ev = json.loads(RunLayout(trial).evaluation.read_text())["methods"]["ensemble"]
        groups = json.loads(RunLayout(trial).groups.read_text())
        best = min(best, float(ev["loss"]))
        tune.report({
            "boost_steps": b, "val_loss": float(ev["loss"]), "val_accuracy": float(ev["avg_accuracy"]),
            "train_loss": float("nan"), "best_val_loss": best, "density": float(groups.get("score", float("nan"))),
        })
