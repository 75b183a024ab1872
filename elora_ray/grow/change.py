"""What a grow changes: the tasks added to and removed from a finished run, checked up front.

A run grows only in its task list: every other setting must equal the run's own ``config.yaml``
(the model, adapter, projection and training settings decide what the kept artifacts mean), and
the run must have finished the ensemble (groups, members and weights). The grown run's task order
is the run's order without the removed tasks, then the new tasks in the config's order, so the
index of every kept task's head moves only past removed ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig, load_config
from ..errors import ConfigError
from ..layout import RunLayout

#: Settings that may differ between the run and the grow's config: the task list, where things run
#: (resources, Ray, logging; the job fingerprints leave them out too) and the sections a grow does not use.
FREE_KEYS = ("tasks", "ray", "report_to", "data_root", "grow", "baselines", "tune", "fidelity", "analyze", "federated",
             "train.num_workers", "train.cpus_per_worker", "train.use_gpu", "train.gpus_per_worker", "train.max_failures",
             "train.micro_batch_size", "train.gradient_checkpointing", "featurize.actors", "featurize.cpus_per_actor",
             "featurize.gpus_per_actor", "featurize.batch_size", "featurize.shard_size", "evaluate.batch_size")


@dataclass
class TaskChange:
    old_names: list[str]
    new_names: list[str]
    """The grown run's task order."""
    added: list[str]
    removed: list[str]
    cfg: RunConfig
    """The grow's config with its tasks in ``new_names`` order (what the grown run records)."""

    @property
    def kept(self) -> list[str]:
        return [n for n in self.old_names if n not in self.removed]

    def index_map(self) -> dict[int, int]:
        """Old task index → new index, for the kept tasks (heads are stored by index)."""
        return {self.old_names.index(n): self.new_names.index(n) for n in self.kept}


def run_config(run: Path) -> RunConfig:
    path = RunLayout(run).config
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run} is not an elora run directory")
    return load_config(path)


def require_finished(run: Path) -> None:
    layout = RunLayout(run)
    for path, command in ((layout.features_manifest, "featurize"), (layout.groups, "cluster"), (layout.members, "train"),
                          (layout.weights, "combine")):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: grow a run that finished `elora {command}` (run `elora run` first)")


def task_change(run: Path, new_cfg: RunConfig) -> TaskChange:
    """The change from ``run``'s tasks to ``new_cfg``'s; refuses any other difference."""
    old_cfg = run_config(run)
    if not new_cfg.tasks or not old_cfg.tasks:
        raise ConfigError("growing a run needs explicit tasks: lists in both the run's config and the new one; for the "
                          "embedded suite write it out with `elora suite --out DIR` and run its config.yaml")
    diffs = [d for d in _diff(old_cfg.model_dump(mode="json"), new_cfg.model_dump(mode="json"))
             if not any(d == k or d.startswith(k + ".") for k in FREE_KEYS)]
    if diffs:
        raise ConfigError(f"only the tasks: list may change when a run grows; these settings differ from {RunLayout(run).config}: "
                          f"{', '.join(diffs[:8])}{' …' if len(diffs) > 8 else ''}. Start a new run (`elora run`) for them")
    old_names = [t.name for t in old_cfg.tasks]
    wanted = [t.name for t in new_cfg.tasks]
    added = [n for n in wanted if n not in old_names]
    removed = [n for n in old_names if n not in wanted]
    if not added and not removed:
        raise ConfigError(f"the config lists the same tasks as {run} ({len(old_names)}): nothing to add or remove")
    new_names = [n for n in old_names if n not in removed] + added
    if not new_names:
        raise ConfigError("removing every task leaves nothing to ensemble")
    by_name = {t.name: t for t in new_cfg.tasks}
    cfg = new_cfg.model_copy(update={"tasks": [by_name[n] for n in new_names]})
    return TaskChange(old_names, new_names, added, removed, cfg)


def without_tasks(run: Path, names: list[str]) -> RunConfig:
    """The run's own config without the named tasks (``elora remove-task``)."""
    cfg = run_config(run)
    have = [t.name for t in cfg.tasks]
    unknown = [n for n in names if n not in have]
    if unknown:
        raise ConfigError(f"tasks {unknown} are not in {run} (its tasks: {have})")
    return cfg.model_copy(update={"tasks": [t for t in cfg.tasks if t.name not in names]})


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
