"""``elora train``: one adapter per group of ``groups.json`` (Algorithm 2, line 2), plus the
θ* reference outputs the boosting step measures learners against.

Writes ``ensemble/members.json`` (the groups and their adapters). Re-running with the same
configuration and groups skips finished adapters and keeps boosting learners already added.

``also``: further jobs trained in the same pool (``elora run`` passes the baselines that need
only the groups, so that a long baseline adapter runs while the groups train instead of after
them; the baselines stage then finds them done). All jobs start longest first (training samples).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ..artifacts import read_groups, read_prepared
from ..config import RunConfig
from ..ensemble.members import EnsembleMembers, GroupMembers, save_members
from ..errors import ConfigError
from ..io import fingerprint
from ..layout import THETA_STAR, RunLayout
from .jobs import AdapterJob
from .runner import run_jobs

log = logging.getLogger(__name__)


def train_seed(cfg: RunConfig) -> int:
    return cfg.train.seed if cfg.train.seed is not None else cfg.seed


def output_splits(names: list[str], train_tasks: list[str]) -> dict[str, list[str]]:
    """Training logits of the job's own tasks (boosting), validation and test of all tasks
    (weights may combine any group for any task)."""
    return {"train": list(train_tasks), "validation": list(names), "test": list(names)}


def reference_job(names: list[str]) -> AdapterJob:
    return AdapterJob(id=THETA_STAR, method="reference", tasks=[], output_tasks=output_splits(names, names), kind="reference")


def in_task_order(group: list[str], names: list[str]) -> list[str]:
    """The group's tasks in the run's task order: the same set of tasks always trains on the
    same rows in the same batch order, whichever grouping method produced it."""
    members = set(group)
    return [n for n in names if n in members]


def group_jobs(cfg: RunConfig, groups: list[list[str]], names: list[str], prefix: str = "group", method: str = "ensemble") -> list[AdapterJob]:
    jobs = []
    for i, g in enumerate(groups):
        tasks = in_task_order(g, names)
        jobs.append(AdapterJob(id=f"{prefix}-{i}", method=method, tasks=tasks, output_tasks=output_splits(names, tasks), seed=train_seed(cfg)))
    return jobs


def train_stage(cfg: RunConfig, run_dir: Path, force: bool = False, progress: bool = True,
                also: Sequence[AdapterJob] = ()) -> dict:
    run = Path(run_dir)
    groups = read_groups(run)
    prepared = read_prepared(run)
    names = [t.name for t in prepared]
    unknown = sorted({t for g in groups for t in g} - set(names))
    if unknown:
        raise ConfigError(f"{RunLayout(run).groups}: tasks {unknown} are not in the prepared data; rerun `elora cluster`")
    # θ*'s outputs: the boosting reference, and the "no fine-tuning" row of every evaluation
    jobs = [*group_jobs(cfg, groups, names), reference_job(names)]
    extra = [j for j in also if j.id not in {g.id for g in jobs}]
    if extra:
        log.info("train: also training %d baseline adapter(s) in the same pool: %s", len(extra), ", ".join(j.id for j in extra))
    sizes = {t.name: len(t.splits.get("train", [])) for t in prepared}
    order = sorted([*jobs, *extra], key=lambda j: -sum(sizes.get(n, 0) for n in j.tasks))  # longest first
    records = run_jobs(cfg, run, order, desc="train groups" + (" and baselines" if extra else ""), progress=progress,
                       force=force)
    fp = fingerprint([records[j.id]["fingerprint"] for j in jobs if j.kind != "reference"])
    existing = None
    if RunLayout(run).members.is_file() and not force:
        from ..ensemble.members import load_members

        existing = load_members(run)
    if existing is None or existing.fingerprint != fp:
        save_members(run, EnsembleMembers([GroupMembers(list(j.tasks), j.id) for j in jobs if j.kind != "reference"], fingerprint=fp))
    group_records = [records[j.id] for j in jobs if j.kind != "reference"]
    return {
        "groups": groups,
        "adapters": [r["id"] for r in group_records],
        "train_flops": sum(float(r["metrics"].get("train_flops", 0.0)) for r in group_records),
        "seconds": sum(float(r["wall_s"]) for r in group_records),
        "records": {j.id: records[j.id] for j in jobs},
    }
