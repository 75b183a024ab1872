"""The baselines as adapter jobs, trained under the ensemble's protocol (same epochs, lr,
batch size, seed, early stopping), and which adapter each task is evaluated with.

- ``single_adapter``: one adapter on all tasks.
- ``single_qlora``: the same over a 4-bit base (QLoRA for LoRA runs, QAdapter for bottleneck
  adapter runs).
- ``per_task_adapters``: one adapter per task.
- ``mtl_ft``: the shared all-task adapter, then fine-tuned on each task from it.
- ``random_groups``: a random partition with the ensemble's group sizes, one adapter per group.
- ``gradient_cosine``: groups by cosine similarity of mean task gradients (paper Table 7).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..adapter_types import adapter_type
from ..cluster.kernel import scaling_for
from ..config import RunConfig
from ..train.jobs import AdapterJob
from ..train.stage import in_task_order, train_seed
from .grouping import gradient_cosine_groups, random_groups

log = logging.getLogger(__name__)


@dataclass
class MethodPlan:
    name: str
    jobs: list[AdapterJob]
    """Every job whose cost this method pays (shared jobs appear in several plans)."""
    assignment: dict[str, str]
    """task → the job id whose outputs it is evaluated with."""
    groups: list[list[str]] | None = None
    notes: list[str] = field(default_factory=list)


def _eval_splits(tasks: list[str]) -> dict[str, list[str]]:
    return {"validation": list(tasks), "test": list(tasks)}


def baseline_plans(cfg: RunConfig, run_dir: Path, names: list[str], ensemble_groups: list[list[str]]) -> list[MethodPlan]:
    seed = train_seed(cfg)
    plans: list[MethodPlan] = []
    single = AdapterJob(id="single", method="single_adapter", tasks=list(names), output_tasks=_eval_splits(names), seed=seed)
    for method in cfg.baselines.methods:
        if method == "single_adapter":
            plans.append(MethodPlan(method, [single], {n: "single" for n in names}, [list(names)]))
        elif method == "single_qlora":
            q = adapter_type(cfg.adapter.type).quantized_counterpart
            if q is None:
                log.info("baselines: single_qlora skipped: adapter.type=%s is already quantized or has no 4-bit counterpart", cfg.adapter.type)
                continue
            job = AdapterJob(id=f"single-{q}", method=method, tasks=list(names), output_tasks=_eval_splits(names), adapter_type=q, seed=seed)
            plans.append(MethodPlan(method, [job], {n: job.id for n in names}, [list(names)], [f"adapter type {q}"]))
        elif method == "per_task_adapters":
            jobs = [AdapterJob(id=f"task-{n}", method=method, tasks=[n], output_tasks=_eval_splits([n]), seed=seed) for n in names]
            plans.append(MethodPlan(method, jobs, {n: f"task-{n}" for n in names}, [[n] for n in names]))
        elif method == "mtl_ft":
            epochs = cfg.baselines.finetune_epochs
            jobs = [single] + [
                AdapterJob(id=f"mtl_ft-{n}", method=method, tasks=[n], output_tasks=_eval_splits([n]), init_from="single",
                           epochs=epochs, seed=seed)
                for n in names
            ]
            plans.append(MethodPlan(method, jobs, {n: f"mtl_ft-{n}" for n in names}, [[n] for n in names]))
        elif method in ("random_groups", "gradient_cosine"):
            if method == "random_groups":
                groups = random_groups(names, [len(g) for g in ensemble_groups], seed + 7919)
                prefix = "random"
            else:
                groups, _ = gradient_cosine_groups(run_dir, names, len(ensemble_groups), seed, cfg.cluster.solver,
                                                   scaling_for(cfg.estimate.affinity, cfg.cluster.local_scaling))
                prefix = "gradcos"
            groups = [in_task_order(g, names) for g in groups]
            jobs = [
                AdapterJob(id=f"{prefix}-{i}", method=method, tasks=g, output_tasks=_eval_splits(g), seed=seed)
                for i, g in enumerate(groups)
            ]
            plans.append(MethodPlan(method, jobs, {n: f"{prefix}-{i}" for i, g in enumerate(groups) for n in g}, groups))
    return plans


def reuse_ensemble_adapters(plans: list[MethodPlan], ensemble_jobs: list[AdapterJob]) -> int:
    """A baseline job that would train exactly an ensemble group's adapter — same tasks, seed and
    training settings — uses that adapter instead of training a copy (its cost still counts for the
    baseline). Returns how many baseline jobs were replaced."""
    twins = {(tuple(sorted(j.tasks)), j.seed): j for j in ensemble_jobs}

    def plain(j: AdapterJob) -> bool:
        return (j.kind == "trained" and j.loss == "ce" and j.adapter_type is None and j.init_from is None
                and j.epochs is None and j.lr is None and j.train_heads is None and j.targets is None)

    rename: dict[str, AdapterJob] = {}
    for p in plans:
        for j in p.jobs:
            twin = twins.get((tuple(sorted(j.tasks)), j.seed)) if plain(j) else None
            if twin is not None:
                rename[j.id] = twin
    for p in plans:
        replaced = sorted({j.id for j in p.jobs if j.id in rename})
        p.jobs = [rename.get(j.id, j) for j in p.jobs]
        for j in p.jobs:
            if j.init_from in rename:
                j.init_from = rename[j.init_from].id
        p.assignment = {t: rename[i].id if i in rename else i for t, i in p.assignment.items()}
        if replaced:
            p.notes.append("reuses " + ", ".join(f"{rename[i].id} (= {i})" for i in replaced)
                           + ": the same tasks, seed and settings as an ensemble group")
    return len(rename)


def planned_baselines(cfg: RunConfig, run_dir: Path, names: list[str], groups: list[list[str]],
                      ensemble_jobs: list[AdapterJob]) -> tuple[list[MethodPlan], list[AdapterJob], int]:
    """(plans, their jobs each once with the ensemble's twins reused, how many were reused)."""
    plans = baseline_plans(cfg, run_dir, names, groups)
    reused = reuse_ensemble_adapters(plans, ensemble_jobs)
    return plans, unique_jobs(plans), reused


def unique_jobs(plans: list[MethodPlan]) -> list[AdapterJob]:
    """Jobs of all plans, each once, in an order where ``init_from`` comes first."""
    seen: dict[str, AdapterJob] = {}
    for p in plans:
        for j in p.jobs:
            seen.setdefault(j.id, j)
    first = [j for j in seen.values() if j.init_from is None]
    return first + [j for j in seen.values() if j.init_from is not None]
