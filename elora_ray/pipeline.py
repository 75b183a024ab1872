"""``elora run``: the stages of :data:`elora_ray.stages.PIPELINE` in order, each resumable.

Stages: prepare (data) → model check → featurize → estimate → cluster → train (group
adapters) → boost → combine (weights) → baselines → evaluate. Every stage skips itself when
its artifacts match the current configuration, so rerunning a command resumes. One runner
(:func:`run_stages`) does force, timing and metrics for all of them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from .config import RunConfig
from .errors import ConfigError
from .io import fingerprint, write_json, write_text
from .layout import RunLayout
from .raysession import check_shared_storage, ensure_ray
from .runlog import setup_logging
from .stages import PIPELINE, Stage, get_stage, pipeline_names
from .storage import remote_of, sync_up

log = logging.getLogger(__name__)
STAGES = pipeline_names()


def init_run_dir(cfg: RunConfig, out: Path) -> None:
    """Create the run directory and start its log (``run.log``); nothing else is written yet."""
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)


def run_stages(cfg: RunConfig, out: str | Path, until: str = "cluster", force: bool = False, force_last: bool = False,
               record: bool = True) -> dict:
    """Run the pipeline stages up to and including ``until``; returns {stage: result, "_seconds": {...}}.

    ``force`` redoes every stage, ``force_last`` only ``until``. ``record``: write ``config.yaml`` once they all
    succeeded (a side stage that runs them first records it after its own work instead)."""
    out = Path(out).absolute()  # Ray workers of an existing cluster do not share the driver's working dir
    until = until.replace("-", "_")
    if until not in STAGES:
        raise ValueError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}")
    init_run_dir(cfg, out)
    _check_storage_once(cfg, out)
    plan = check_plan(cfg, out)
    results: dict = {}
    seconds: dict[str, float] = {}
    last = STAGES.index(until)
    baselines_follow = last >= STAGES.index("baselines") and not (force or force_last)
    for i, stage in enumerate(PIPELINE[: last + 1]):
        options = {"with_baselines": True} if stage.name == "train" and baselines_follow else {}
        results[stage.name], seconds[stage.name] = _run_one(stage, cfg, out, force or (force_last and i == last), **options)
        if stage.name == "prepare":  # written once the data is known good: a bad-input run changes nothing
            write_json(RunLayout(out).plan, plan)
    if record:
        record_run_config(cfg, out)
    results["_seconds"] = seconds
    work = _stage_timings(out)
    results["_work_seconds"] = {k: work.get(k, {}).get("seconds", v) for k, v in seconds.items()}
    results["_skipped"] = [k for k in seconds if work.get(k, {}).get("skipped_last", False)]
    return results


def check_plan(cfg: RunConfig, out: Path) -> dict:
    """The resource plan (:mod:`elora_ray.plan`) before any stage loads the model; returned for
    ``plan.json``, which the caller writes once the data is prepared. On this machine's own Ray
    instance a stage that cannot fit stops the run here, with the settings that would fit (and
    ``plan.json`` says so); connected to a cluster (whose GPU memory Ray does not report) the problems
    are logged as warnings: check the cluster's node shape with ``elora plan --gpu-memory …``."""
    from .plan import NodeShape, build_plan

    connected = bool(cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    plan = build_plan(cfg, NodeShape.this_machine())
    data = plan.to_dict() | {"checked": not connected}
    if plan.problems and connected:
        for p in plan.problems:
            log.warning("plan (this machine's shape, not the cluster's): %s", p.text())
        return data
    if plan.problems:
        write_json(RunLayout(out).plan, data)
    plan.check()
    return data


_CHECKED: set[str] = set()


def _check_storage_once(cfg: RunConfig, out: Path) -> None:
    """Connected to a multi-node cluster (``ray.address`` / ``$RAY_ADDRESS``, e.g. under ``ray job
    submit``): every node must see the run directory, checked once per process and directory."""
    import ray

    if str(out.resolve()) in _CHECKED or not (ray.is_initialized() or cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        return
    ensure_ray(cfg.ray)
    remote = remote_of(out)
    if remote is None:
        check_shared_storage(out)
    else:
        from .storage import WORKDIR_ENV

        check_shared_storage(out, name=f"{remote} (its working copy {out})",
                             fix=f"On a multi-node cluster the working copy of a bucket run must be on storage every "
                                 f"node mounts at the same path: set {WORKDIR_ENV} to such a directory (NFS, EFS, a "
                                 "ReadWriteMany volume) for the job; the bucket stays the durable copy "
                                 "(see docs/operations.md)")
    _CHECKED.add(str(out.resolve()))


def run_stage(cfg: RunConfig, out: str | Path, name: str, force: bool = False, **options) -> dict:
    """Run one stage by name (pipeline or side stage), after the stages it needs; returns its result."""
    stage, out = get_stage(name), Path(out).absolute()
    if stage in PIPELINE:
        return run_stages(cfg, out, until=stage.name, force_last=force)[stage.name]
    if stage.after is not None:
        run_stages(cfg, out, until=stage.after, record=False)
    else:
        init_run_dir(cfg, out)
    result = _run_one(stage, cfg, out, force, **options)[0]
    record_run_config(cfg, out)
    return result


def record_run_config(cfg: RunConfig, out: Path) -> None:
    """``config.yaml``: the resolved config of the last command whose stages all succeeded (the one a later
    command without ``--config`` starts from). A failed command, e.g. a setting a later stage rejects, leaves
    it as it was, so its settings do not carry over."""
    from .prepare import write_run_config

    write_run_config(cfg, out)
    sync_up(out)


def _run_one(stage: Stage, cfg: RunConfig, out: Path, force: bool, **options) -> tuple[dict, float]:
    t = time.perf_counter()
    if stage.wants_runner:
        options["runner"] = run_stages
    result = stage.run(cfg, out, force=force, **options)
    seconds = round(time.perf_counter() - t, 2)
    record_stage_metrics(cfg, out, stage, result)
    _record_timing(out, stage.name, result, seconds, force or stage.always_runs)
    sync_up(out)  # a run directory in a bucket: this stage's artifacts are uploaded now
    return result, seconds


def _stage_timings(out: Path) -> dict:
    path = RunLayout(out).metrics / "stage_timings.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _record_timing(out: Path, name: str, result: dict, seconds: float, force: bool) -> None:
    """Keep the seconds of the invocation that did a stage's work: a rerun that finds the stage current
    (same result) marks it skipped and keeps the earlier time, so a resumed report still tells the cost."""
    timings = _stage_timings(out)
    digest = fingerprint(result)
    previous = timings.get(name)
    if previous is None or previous.get("result") != digest or force:
        timings[name] = {"seconds": seconds, "result": digest, "skipped_last": False}
    else:
        timings[name] = {**previous, "skipped_last": True}
    write_json(RunLayout(out).metrics / "stage_timings.json", timings)


def record_stage_metrics(cfg: RunConfig, out: Path, stage: Stage, result: dict) -> None:
    """Log a stage's scalars (once per distinct result, so resumed reruns add nothing) and sync MLflow."""
    from .observe import log_metrics, sync_mlflow

    scopes = stage.metrics(result) if stage.metrics is not None and isinstance(result, dict) else {}
    if scopes:
        seen_path = RunLayout(out).metrics / "stages_logged.json"
        seen = json.loads(seen_path.read_text()) if seen_path.is_file() else {}
        digest = fingerprint(scopes)
        if seen.get(stage.name) != digest:
            for scope, rows in scopes.items():
                for step, metrics in rows:
                    log_metrics(out, scope, metrics, step, cfg.report_to)
            write_json(seen_path, {**seen, stage.name: digest})
    sync_mlflow(out, cfg)


def run_pipeline(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    """Every pipeline stage, then ``report.json``, ``report.md`` and the plots; returns the report."""
    t0, out = time.perf_counter(), Path(out).absolute()
    res = run_stages(cfg, out, "evaluate", force=force)
    feats, est, groups = res["featurize"], res["estimate"], res["cluster"]
    evaluation = res["evaluate"]
    report = {
        "stages": list(res["_seconds"]),
        "stage_seconds": res["_work_seconds"],
        "stages_skipped": res["_skipped"],
        "wall_s": round(time.perf_counter() - t0, 2),
        "tasks": res["prepare"]["tasks"],
        "model": res["model_check"],
        "featurize": {k: feats[k] for k in ("dim", "samples", "tokens", "flops", "gradient_parameters", "seconds")},
        "estimate": {k: est[k] for k in ("num_subsets", "subset_size", "coverage", "metric", "seconds")},
        "groups": groups["groups"],
        "clustering": {k: groups.get(k) for k in ("m", "score", "method", "reason", "planted_ari")},
        "boosting": [
            {k: s[k] for k in ("step", "group", "job", "method", "train_loss_before", "train_loss_after",
                               "validation_loss_before", "validation_loss_after", "rho", "coef")}
            for s in res["boost"]["steps"]
        ],
        "weights": {n: t["weights"] for n, t in res["combine"]["tasks"].items()},
        "evaluation_split": evaluation["split"],
        "methods": evaluation["methods"],
        "ensemble_ablations": evaluation["ensemble_ablations"],
        "majority": evaluation.get("majority"),
        "comparisons": evaluation.get("comparisons", {}),
    }
    from .report.markdown import render_report_md
    from .report.plots import plot_cost_accuracy, plot_per_task_accuracy

    plots = RunLayout(out).plots
    plot_per_task_accuracy(report["methods"], plots / "per_task_accuracy.png", split=evaluation["split"],
                           majority=report["majority"])
    plot_cost_accuracy(report["methods"], plots / "cost_vs_accuracy.png", split=evaluation["split"],
                       majority=report["majority"])
    report["plots"] = ["plots/affinity.png", "plots/per_task_accuracy.png", "plots/cost_vs_accuracy.png"]
    write_json(RunLayout(out).report_json, report)
    write_text(RunLayout(out).report_md, render_report_md(report))
    log.info("run finished in %.1fs; report: %s", report["wall_s"], RunLayout(out).report_md)
    return report
