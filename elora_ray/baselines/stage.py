"""``elora baselines``: train every baseline's adapters (``baselines.methods``) with the same
runner as the ensemble, and record which adapter each task is evaluated with
(``baselines/plans.json``). Jobs warm-started from another (MTL-FT) run in a second wave.

Under ``elora run`` the first wave usually trained already, next to the ensemble's groups in the
train stage (:func:`first_wave_jobs`); it is found done here and skipped."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from ..artifacts import read_groups, read_prepared
from ..config import RunConfig
from ..io import write_json
from ..layout import RunLayout
from ..train.jobs import AdapterJob
from ..train.runner import run_jobs
from ..train.stage import group_jobs
from .plans import planned_baselines

log = logging.getLogger(__name__)


def baselines_stage(cfg: RunConfig, run_dir: Path, force: bool = False, progress: bool = True) -> dict:
    run = Path(run_dir)
    names = [t.name for t in read_prepared(run)]
    groups = read_groups(run)
    plans, jobs, reused = planned_baselines(cfg, run, names, groups, group_jobs(cfg, groups, names))
    if reused:
        log.info("baselines: %d adapter(s) identical to an ensemble group's reused instead of trained again", reused)
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


def first_wave_jobs(cfg: RunConfig, run_dir: Path) -> list[AdapterJob]:
    """The baseline jobs that need nothing but the groups (all but the warm-started ones), minus
    those an ensemble group already trains: what the train stage can run in the same pool."""
    run = Path(run_dir)
    names = [t.name for t in read_prepared(run)]
    groups = read_groups(run)
    _, jobs, _ = planned_baselines(cfg, run, names, groups, group_jobs(cfg, groups, names))
    own = {j.id for j in group_jobs(cfg, groups, names)}
    return [j for j in jobs if j.init_from is None and j.id not in own]
