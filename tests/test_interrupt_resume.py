"""Estimate, boost and combine interrupted midway (an exception injected where a kill would land)
resume from what they finished and end where an uninterrupted run ends; nothing is half-written.
(Featurize and training are killed for real, with SIGKILL, in test_kill_resume.py.)"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import TINY

from elora_ray.config import load_config


class Interrupted(RuntimeError):
    pass


def _fail_on_call(n: int, real):
    """A stand-in for ``real`` that raises on its n-th call (1-based) and forwards the others."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise Interrupted(f"interrupted at call {n}")
        return real(*args, **kwargs)

    return wrapper


def test_estimate_interrupted_between_chunks_resumes_them(tiny_pipeline, copy_run, monkeypatch, caplog):
    from elora_ray.estimate import stage as est

    _, shared, _ = tiny_pipeline
    cfg = load_config(None, [*TINY, "estimate.affinity=transfer", "estimate.num_subsets=12", "estimate.subsets_per_task=2"])
    reference, run = copy_run(shared, "reference"), copy_run(shared, "run")
    est.estimate(cfg, reference, progress=False)

    # 6 chunks, each writing its gains file then its rows: fail on the 7th write (3 chunks done, the 4th torn)
    monkeypatch.setattr(est, "write_parquet", _fail_on_call(7, est.write_parquet))
    with pytest.raises(Interrupted):
        est.estimate(cfg, run, progress=False)
    monkeypatch.undo()
    chunks = run / "estimate" / "chunks"
    finished = {p.name: p.stat().st_mtime_ns for p in chunks.glob("chunk-*.parquet")}
    assert len(finished) == 3 and not (run / "estimate" / "summary.json").exists()

    caplog.set_level("INFO")
    est.estimate(cfg, run, progress=False)
    assert "resuming, 3 of 6 chunks already solved" in caplog.text
    assert {n: (chunks / n).stat().st_mtime_ns for n in finished} == finished  # not solved again
    got = pd.read_csv(run / "affinity.csv", index_col=0)
    want = pd.read_csv(reference / "affinity.csv", index_col=0)
    pd.testing.assert_frame_equal(got, want)


def test_boost_interrupted_at_its_second_step_keeps_the_first(tiny_pipeline, copy_run, monkeypatch):
    from elora_ray.boost import stage as boost
    from elora_ray.ensemble.members import load_members

    cfg, shared, _ = tiny_pipeline
    assert cfg.boost.steps == 2
    run = copy_run(shared)
    want = load_members(shared)
    first_record = run / "train" / "jobs" / "boost-0.json"

    monkeypatch.setattr(boost, "run_jobs", _fail_on_call(2, boost.run_jobs))
    with pytest.raises(Interrupted):
        boost.boost_stage(cfg, run, force=True, progress=False)
    monkeypatch.undo()
    kept = load_members(run)
    assert kept.boosting_steps == 1  # members.json was saved after step 1, before the failure
    stamp = first_record.stat().st_mtime_ns

    calls = []
    real = boost.run_jobs
    monkeypatch.setattr(boost, "run_jobs", lambda c, r, jobs, **kw: calls.append([j.id for j in jobs]) or real(c, r, jobs, **kw))
    result = boost.boost_stage(cfg, run, progress=False)
    assert calls == [["boost-1"]]  # only the missing step ran
    assert [s["step"] for s in result["steps"]] == [0, 1]
    assert first_record.stat().st_mtime_ns == stamp  # step 1's learner was not refit
    got = load_members(run)
    assert [[(lr.job_id, lr.coef) for lr in g.learners] for g in got.groups] == \
        [[(lr.job_id, pytest.approx(lr.coef, rel=1e-9)) for lr in g.learners] for g in want.groups]


def test_combine_interrupted_leaves_the_previous_weights_and_reruns_identically(tiny_pipeline, copy_run, monkeypatch):
    from elora_ray.ensemble import stage as comb

    cfg, shared, _ = tiny_pipeline
    run = copy_run(shared)
    path = run / "ensemble" / "weights.json"
    before = path.read_bytes()

    monkeypatch.setattr(comb, "fit_task_weights", _fail_on_call(3, comb.fit_task_weights))
    with pytest.raises(Interrupted):
        comb.combine_stage(cfg, run, force=True, progress=False)
    monkeypatch.undo()
    assert path.read_bytes() == before  # nothing half-written
    assert not list(path.parent.glob("*.tmp*"))

    redone = comb.combine_stage(cfg, run, force=True, progress=False)
    old = json.loads(before)
    for name, t in redone["tasks"].items():
        np.testing.assert_allclose(t["weights"], old["tasks"][name]["weights"], atol=1e-6)


def test_estimate_accuracy_uses_the_calibrated_margin_noise_and_reruns_when_it_changes(tiny_pipeline, copy_run, monkeypatch,
                                                                                      tmp_path):
    """affinity: paper with metric: accuracy scores subsets by the expected accuracy under σ (default, or
    calibration.json's); a new σ changes the fingerprint, so the stage recomputes rather than reusing."""
    from scipy.stats import norm

    from elora_ray.estimate import stage as est
    from elora_ray.estimate.calibration import DEFAULT_MARGIN_NOISE, cache_key, calibration_constant, resolve_l2
    from elora_ray.estimate.surrogate import fit_surrogate
    from elora_ray.io import write_json
    from elora_ray.layout import RunLayout

    _, shared, _ = tiny_pipeline
    cfg = load_config(None, [*TINY, "estimate.affinity=paper", "estimate.metric=accuracy", "estimate.num_subsets=6"])
    run = copy_run(shared)
    RunLayout(run).calibration.unlink(missing_ok=True)
    monkeypatch.setenv("ELORA_CACHE", str(tmp_path / "cache"))  # not a calibration another test left in the shared cache

    def check(sigma: float) -> None:
        summary = est.estimate(cfg, run, progress=False)
        assert summary["margin_noise"] == sigma
        names, feats = est.load_estimation_features(run)
        rows = pd.read_parquet(run / "estimate" / "results.parquet")
        l2 = est.l2_rule(cfg, run)[0]
        for sid, group in rows.groupby("subset_id"):
            members = list(group["members"].iloc[0])
            g = np.concatenate([feats[m][0] for m in members])
            h = np.concatenate([feats[m][1] for m in members])
            w = fit_surrogate(g, h, l2=resolve_l2(l2, len(h)), max_iter=cfg.estimate.max_iter).w
            for task, acc in zip(group["task"], group["accuracy"]):
                margin = feats[task][3].astype(float) + feats[task][2].astype(float) @ w
                want = norm.cdf(margin / sigma).mean() if sigma else (margin > 0).mean()
                assert abs(acc - want) < 1e-6, (sid, task, acc, want)

    check(DEFAULT_MARGIN_NOISE[cfg.feature_gradient()])
    write_json(RunLayout(run).calibration, {"key": cache_key(cfg), "constant": calibration_constant(cfg, run)[0],
                                            "margin_noise": 0.0})
    check(0.0)
