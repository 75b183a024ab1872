"""``elora tune`` with the estimated objective: Ray Tune over m and b, ASHA on boosting steps."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from elora_ray.config import load_config
from elora_ray.pipeline import run_stage, run_stages
from elora_ray.tune.estimated import TaskFeatureArrays, estimated_path
from elora_ray.tune.stage import tune_stage


def _planted(rng, n_tasks=4, n=120, d=6):
    """Tasks 0,1 want direction +e0, tasks 2,3 want −e0: grouping them together conflicts."""
    feats = {}
    for i in range(n_tasks):
        sign = 1.0 if i < n_tasks // 2 else -1.0
        def split(k):
            g = rng.normal(size=(k, d))
            g[:, 0] = sign * np.abs(g[:, 0])  # gold log-odds grows along sign·e0 for this task
            return g, np.zeros(k)
        tg, th = split(n)
        vg, vh = split(n // 2)
        feats[f"t{i}"] = TaskFeatureArrays(tg, th, vg, vh)
    return feats


def test_estimated_objective_prefers_the_non_conflicting_partition_and_boosting_helps():
    feats = _planted(np.random.default_rng(0))
    together = estimated_path(feats, [["t0", "t1", "t2", "t3"]], 0)[0]
    split = estimated_path(feats, [["t0", "t1"], ["t2", "t3"]], 0)[0]
    assert split["val_loss"] < together["val_loss"] - 0.05
    path = estimated_path(feats, [["t0", "t1"], ["t2", "t3"]], 3)
    assert [p["boost_steps"] for p in path] == [0, 1, 2, 3]
    assert all(b["train_loss"] <= a["train_loss"] + 1e-12 for a, b in zip(path, path[1:]))


def test_tune_returns_m_and_b_with_trials_and_plot(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, ["model.name_or_path=tiny-bert", "suite.samples_per_task=40", "featurize.dim=16",
                             "suite.tasks_per_group=[2,2,2]", "estimate.num_subsets=30", "tune.max_groups=3",
                             "tune.max_boost_steps=2"])
    run_stages(cfg, out, until="estimate")
    best = tune_stage(cfg, out, progress=False)
    table = pd.read_csv(out / "tune" / "trials.csv")
    assert set(table["m"]) == {1, 2, 3}
    # Tune's best is the best row of trials.csv (rows tied at its 6 printed digits all qualify)
    tops = table[np.isclose(table["val_loss"], table["val_loss"].min(), rtol=1e-5)]
    assert (best["m"], best["b"]) in set(zip(tops["m"].astype(int), tops["b"].astype(int)))
    assert best["estimated_val_loss"] == pytest.approx(table["val_loss"].min())
    assert sorted(t for g in best["groups"] for t in g) == sorted(json.loads((out / "data" / "manifest.json").read_text())["tasks"])
    assert json.loads((out / "tune" / "best.json").read_text())["m"] == best["m"]
    assert (out / "plots" / "tune_objective.png").stat().st_size > 5_000


def test_tune_with_the_real_validation_objective_trains_in_placement_groups(tmp_path):
    """Each trial trains its ensemble (group adapters in the trial's placement group: on 2 CPUs two
    concurrent trials must not deadlock) and reports the validation loss after each boosting step."""
    out = tmp_path / "run"
    cfg = load_config(None, ["model.name_or_path=tiny-bert", "suite.samples_per_task=24", "featurize.dim=16",
                             "suite.tasks_per_group=[2,2]", "estimate.num_subsets=20", "tune.objective=validation",
                             "tune.min_groups=1",
                             "tune.max_groups=2", "tune.max_boost_steps=1", "tune.scheduler=fifo", "train.epochs=1"])
    best = run_stage(cfg, out, "tune")  # runs prepare..estimate first and gives the trials the pipeline runner
    table = pd.read_csv(out / "tune" / "trials.csv")
    assert sorted(set(table["m"])) == [1, 2] and sorted(set(table["b"])) == [0, 1]
    for m in (1, 2):
        trial = out / "tune" / "trials" / f"m{m}"
        ev = json.loads((trial / "evaluation.json").read_text())
        assert ev["split"] == "validation"
        assert len(json.loads((trial / "groups.json").read_text())["groups"]) == m
        assert (trial / "features").is_symlink()  # reused, not recomputed
        rows = table[(table["m"] == m) & (table["b"] == 1)]
        assert rows["val_loss"].iloc[0] == pytest.approx(ev["methods"]["ensemble"]["loss"])
    tops = table[np.isclose(table["val_loss"], table["val_loss"].min(), rtol=1e-5)]
    assert (best["m"], best["b"]) in set(zip(tops["m"].astype(int), tops["b"].astype(int)))
    assert best["val_loss"] == pytest.approx(table["val_loss"].min())
    assert best["estimated_val_loss"] is None


def test_validation_trials_reserve_what_a_training_job_asks_for():
    """Each training slot of a validation trial holds one local-mode job's resources, its GPU included
    when training uses GPUs (before, CPU-only bundles left GPU jobs waiting forever); Ray Train worker
    groups, which would reserve outside the trial's placement group, are refused."""
    from elora_ray.errors import ConfigError
    from elora_ray.tune.validation import trial_bundles

    cfg = load_config(None, ["tune.train_slots=2", "train.cpus_per_worker=2", "train.gpus_per_worker=1"])  # not auto:
    # auto packs by the GPU memory of this machine (a fraction where it has a GPU), see tests/test_plan.py
    assert trial_bundles(cfg, use_gpu=False) == [{"CPU": 0.01}, {"CPU": 2.0}, {"CPU": 2.0}]
    assert trial_bundles(cfg, use_gpu=True) == [{"CPU": 0.01}, {"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}]
    half = load_config(None, ["tune.train_slots=1", "train.gpus_per_worker=0.5"])  # two small jobs per GPU
    assert trial_bundles(half, use_gpu=True) == [{"CPU": 0.01}, {"CPU": 1.0, "GPU": 0.5}]
    with pytest.raises(ConfigError, match="train.num_workers=0"):
        trial_bundles(load_config(None, ["train.num_workers=2"]), use_gpu=False)
