"""``elora baselines``: train every baseline's adapters (``baselines.methods``) with the same
runner as the ensemble, and record which adapter each task is evaluated with
(``baselines/plans.json``). Jobs warm-started from another (MTL-FT) run in a second wave."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from ..artifacts import read_groups, read_prepared
from ..config import RunConfig
from ..io import write_json
from ..layout import RunLayout
from ..train.runner import run_jobs
from ..train.stage import group_jobs
from .plans import baseline_plans, reuse_ensemble_adapters, unique_jobs

log = logging.getLogger(__name__)


def baselines_stage(cfg: RunConfig, run_dir: Path, force: bool = False, progress: bool = True) -> dict:
    run = Path(run_dir)
    names = [t.name for t in read_prepared(run)]
    groups = read_groups(run)
    plans = baseline_plans(cfg, run, names, groups)
    reused = reuse_ensemble_adapters(plans, group_jobs(cfg, groups, names))
    if reused:
        log.info("baselines: %d adapter(s) identical to an ensemble group's reused instead of trained again", reused)
    jobs = unique_jobs(plans)
    records: dict[str, dict] = {}
    first = [j for j in jobs if j.init_from is None]
    second = [j for j in jobs if j.init_from is not None]
    if first:
        records.update(run_jobs(cfg, run, first, desc="baselines", progress=progress, force=force))
    if second:
        records.update(run_jobs(cfg, run, second, desc="baselines (warm-started)", progress=progress, force=force))
    summary = {
        p.name: {"assignment": p.assignment, "groups": p.groups, "jobs": [j.id for j in p.jobs], "notes": p.notes}
        for p in plans
    }
    write_json(RunLayout(run).baseline_plans, {"methods": summary, "jobs": {j.id: asdict(j) for j in jobs}})
    return {"methods": summary, "records": records}
