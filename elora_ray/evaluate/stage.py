"""``elora evaluate``: every method's per-task accuracy on ``evaluate.split`` and its cost,
computed from the saved adapter outputs (aligned by sample id), into ``evaluation.json``.

Costs under one protocol, from each adapter job's own measurements:

- ``train_flops``: training FLOPs of the method's adapters (6 × parameters touched per token,
  counted by the training loop); the ensemble adds the featurisation FLOPs (its per-sample
  gradients) — the subset regressions and the SDP are CPU seconds and appear in ``wall_s``;
- ``peak_memory_mb``: the largest peak memory of one of its training processes (GPU memory
  when trained on GPU, else resident set size);
- ``wall_s``: the sum of its jobs' training seconds (plus featurize/estimate/cluster for the
  ensemble) — the cost on one worker, independent of how many ran in parallel;
- ``adapter_parameters``: adapter parameters the method serves (all its adapters).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

import numpy as np

from ..artifacts import read_job_record, read_prepared
from ..config import RunConfig
from ..ensemble.members import group_outputs, load_members, load_weights
from ..ensemble.outputs import TaskOutputs, accuracy, log_loss, read_outputs
from ..ensemble.stage import weight_matrix
from ..ensemble.weights import combine
from ..featurize.store import read_manifest
from ..io import fingerprint, write_json
from ..layout import THETA_STAR, RunLayout
from .uncertainty import (at_majority, bootstrap_average, bootstrap_difference, correctness, majority_baseline,
                          sample_units)

log = logging.getLogger(__name__)


def _records(run: Path, job_ids: Iterable[str]) -> list[dict]:
    out = []
    for j in dict.fromkeys(job_ids):
        rec = read_job_record(run, j)
        if rec is None:
            raise FileNotFoundError(f"job record for adapter {j!r} not found in {run}: train it first")
        out.append(rec)
    return out


def summarize(outs: dict[str, TaskOutputs], records: list[dict], extra_flops: float = 0.0, extra_seconds: float = 0.0) -> dict:
    per_task = {name: accuracy(o) for name, o in outs.items()}
    peaks = [float(r["metrics"].get("peak_gpu_mb") or r["metrics"].get("peak_rss_mb") or 0.0) for r in records]
    return {
        "avg_accuracy": float(np.mean(list(per_task.values()))),
        "per_task": per_task,
        "loss": log_loss(outs),
        "train_flops": float(sum(float(r["metrics"].get("train_flops", 0.0)) for r in records) + extra_flops),
        "peak_memory_mb": max(peaks) if peaks else 0.0,
        "wall_s": round(float(sum(float(r["wall_s"]) for r in records) + extra_seconds), 2),
        "adapters": len([r for r in records if r.get("kind") != "reference"]),
        "adapter_parameters": int(sum(int(r.get("adapter_parameters", 0)) for r in records if r.get("kind") != "reference")),
    }


def _assigned(run: Path, assignment: dict[str, str], split: str, num_labels: dict[str, int]) -> dict[str, TaskOutputs]:
    out: dict[str, TaskOutputs] = {}
    for name, job in assignment.items():
        out[name] = read_outputs(run, job, split, [name], num_labels)[name]
    return out


def evaluation_inputs(cfg: RunConfig, run: Path) -> dict:
    """What the evaluation is computed from: the split, the ensemble, its weights, the baselines'
    plans and every adapter job's fingerprint (a change to any of them makes it stale)."""
    layout = RunLayout(run)
    read = lambda p: json.loads(p.read_text()) if p.is_file() else None  # noqa: E731
    jobs = sorted(p.stem for p in layout.job_records.glob("*.json"))
    return {
        "version": 2,  # 2: majority baseline, bootstrap intervals, paired comparison
        "split": cfg.evaluate.split,
        "members": read(layout.members), "weights": read(layout.weights), "plans": read(layout.baseline_plans),
        "jobs": {j: (read_job_record(run, j) or {}).get("fingerprint") for j in jobs},
        "features": read_manifest(run).get("fingerprint"),
    }


def evaluate_stage(cfg: RunConfig, run_dir: Path, force: bool = False) -> dict:
    """Evaluate every method on ``evaluate.split``; skipped when ``evaluation.json`` is current."""
    run = Path(run_dir)
    split = cfg.evaluate.split
    fp = fingerprint(evaluation_inputs(cfg, run))
    path = RunLayout(run).evaluation
    if path.is_file() and not force:
        previous = json.loads(path.read_text())
        if previous.get("fingerprint") == fp:
            log.info("evaluate: %s is current (fingerprint %s), skipping", path, fp)
            return previous
    tasks = read_prepared(run)
    names = [t.name for t in tasks]
    num_labels = {t.name: len(t.labels) for t in tasks}
    members = load_members(run)
    weights = load_weights(run)
    m = len(members.groups)
    groups = [group_outputs(run, members, j, split, names, num_labels) for j in range(m)]
    manifest = read_manifest(run)
    upstream_s = float(manifest.get("seconds", 0.0))
    for f in ("estimate/summary.json",):
        p = run / f
        if p.is_file():
            upstream_s += float(json.loads(p.read_text()).get("seconds", 0.0))
    member_records = _records(run, [j for g in members.groups for j in g.job_ids])
    outs: dict[str, dict] = {"ensemble": combine(groups, weight_matrix(weights))}
    methods: dict[str, dict] = {"ensemble": summarize(outs["ensemble"], member_records, float(manifest["flops"]), upstream_s)}
    methods["ensemble"]["groups"] = [g.tasks for g in members.groups]
    methods["ensemble"]["boosting_steps"] = members.boosting_steps

    plans_path = RunLayout(run).baseline_plans
    if plans_path.is_file():
        plans = json.loads(plans_path.read_text())["methods"]
        for name, plan in plans.items():
            outs[name] = _assigned(run, plan["assignment"], split, num_labels)
            methods[name] = summarize(outs[name], _records(run, plan["jobs"]))
            if plan.get("groups") and name in ("random_groups", "gradient_cosine"):
                methods[name]["groups"] = plan["groups"]

    # Ablations of the ensemble: which part buys what (same adapters, different combination).
    own = {n: list(np.eye(m)[members.group_of(n)]) for n in names}
    no_boost = [read_outputs(run, g.base, split, names, num_labels) for g in members.groups]
    ablations = {
        "groups_only": summarize(combine(no_boost, own), _records(run, [g.base for g in members.groups]), float(manifest["flops"]), upstream_s),
        "groups_boosted": summarize(combine(groups, own), member_records, float(manifest["flops"]), upstream_s),
        "uniform_weights": summarize(combine(groups, {n: [1.0 / m] * m for n in names}), member_records, float(manifest["flops"]), upstream_s),
    }
    if read_job_record(run, THETA_STAR) is not None:
        ablations["theta_star"] = summarize(read_outputs(run, THETA_STAR, split, names, num_labels), [])
    # How much the numbers mean: the most-common-label baseline, bootstrap intervals, tasks at that baseline.
    majority = majority_baseline(tasks, split)
    correct = {name: correctness(o) for name, o in outs.items()}
    units = sample_units(tasks, split, outs["ensemble"])
    for name, r in methods.items():
        r["ci95"] = list(bootstrap_average(correct[name], seed=cfg.seed, units=units))
        r["tasks_at_majority"] = at_majority(r["per_task"], majority)
    comparisons = {}
    if "single_adapter" in correct:
        comparisons["ensemble_minus_single_adapter"] = bootstrap_difference(correct["ensemble"], correct["single_adapter"],
                                                                             seed=cfg.seed, units=units)
    result = {"fingerprint": fp, "split": split, "methods": methods, "ensemble_ablations": ablations,
              "majority": {"per_task": majority, "avg_accuracy": float(np.mean([v["accuracy"] for v in majority.values()]))},
              "comparisons": comparisons}
    write_json(path, result)
    for name, r in methods.items():
        log.info("evaluate: %-18s avg %s accuracy %.4f (%d adapters, %.3g train FLOPs)", name, split, r["avg_accuracy"], r["adapters"], r["train_flops"])
    return result
