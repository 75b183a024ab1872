"""Which adapters make up the ensemble: per group its fine-tuned adapter and its boosting
learners with their coefficients (``ensemble/members.json``), plus the learned combination
weights (``ensemble/weights.json``). Both are small JSON files written atomically."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..io import write_json
from ..layout import THETA_STAR, RunLayout
from .outputs import TaskOutputs, compose, read_outputs


@dataclass
class Learner:
    job_id: str
    coef: float
    """Its output change enters the group's logits times this (η, times ρ with line search)."""
    step: int


@dataclass
class GroupMembers:
    tasks: list[str]
    base: str
    learners: list[Learner] = field(default_factory=list)

    @property
    def job_ids(self) -> list[str]:
        return [self.base] + [lr.job_id for lr in self.learners]


@dataclass
class EnsembleMembers:
    groups: list[GroupMembers]
    reference: str = THETA_STAR
    fingerprint: str = ""
    """Of the group adapters (boosting appends to a members file only with the same one)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EnsembleMembers":
        groups = [
            GroupMembers(g["tasks"], g["base"], [Learner(**lr) for lr in g.get("learners", [])]) for g in data["groups"]
        ]
        return cls(groups, data.get("reference", THETA_STAR), data.get("fingerprint", ""))

    def group_of(self, task: str) -> int:
        for j, g in enumerate(self.groups):
            if task in g.tasks:
                return j
        raise KeyError(f"task {task!r} is in no group")

    @property
    def boosting_steps(self) -> int:
        return sum(len(g.learners) for g in self.groups)

    @property
    def job_ids(self) -> list[str]:
        return [j for g in self.groups for j in g.job_ids]


def save_members(run_dir: Path, members: EnsembleMembers) -> None:
    write_json(RunLayout(run_dir).members, members.to_dict())


def load_members(run_dir: Path) -> EnsembleMembers:
    p = RunLayout(run_dir).members
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: run `elora train` first")
    return EnsembleMembers.from_dict(json.loads(p.read_text()))


def group_outputs(
    run_dir: Path, members: EnsembleMembers, j: int, split: str, tasks: list[str] | None = None,
    num_labels: dict[str, int] | None = None,
) -> dict[str, TaskOutputs]:
    """Group j's ensemble logits (base + boosting learners) on ``split`` for ``tasks``
    (default: the group's own tasks)."""
    g = members.groups[j]
    names = g.tasks if tasks is None else tasks
    base = read_outputs(run_dir, g.base, split, names, num_labels)
    learners = [(read_outputs(run_dir, lr.job_id, split, names, num_labels), lr.coef) for lr in g.learners]
    ref = read_outputs(run_dir, members.reference, split, names, num_labels) if learners else None
    return compose(base, learners, ref)


def save_weights(run_dir: Path, weights: dict) -> None:
    write_json(RunLayout(run_dir).weights, weights)


def load_weights(run_dir: Path) -> dict:
    p = RunLayout(run_dir).weights
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: run `elora combine` first")
    return json.loads(p.read_text())
