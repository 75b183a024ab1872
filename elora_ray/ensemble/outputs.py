"""Adapter outputs (logits per sample) read back and aligned by sample id, and the arithmetic
that turns members into a group's prediction.

A group ensemble's logits on a sample s of task i:

    z_G(s) = z_base(s) + Σ_t c_t · (z_t(s) − z_θ*(s))

where ``z_base`` is the group's fine-tuned adapter, ``z_t`` its boosting learners, ``c_t``
their coefficients (η, times the line-search multiplier if used) and ``z_θ*`` the model at
initialisation: a learner contributes what it *changed*, so adding it does not count the
base model twice. Everything is keyed by (task, sample_id); file order never matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import DataError
from ..layout import RunLayout


@dataclass
class TaskOutputs:
    """One adapter's logits on one task's split, rows sorted by sample id."""

    sample_ids: np.ndarray  # [N] str
    labels: np.ndarray  # [N] int64
    logits: np.ndarray  # [N, C] float64 (C = the task's number of labels)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def align_to(self, sample_ids: np.ndarray, what: str = "outputs") -> "TaskOutputs":
        """Rows reordered to ``sample_ids``; raises if any is missing."""
        if len(sample_ids) == len(self.sample_ids) and np.array_equal(sample_ids, self.sample_ids):
            return self
        pos = {s: i for i, s in enumerate(self.sample_ids)}
        missing = [s for s in sample_ids if s not in pos]
        if missing:
            raise DataError(f"{what}: no row for {len(missing)} sample ids (e.g. {missing[0]!r})")
        idx = np.fromiter((pos[s] for s in sample_ids), dtype=np.int64, count=len(sample_ids))
        return TaskOutputs(self.sample_ids[idx], self.labels[idx], self.logits[idx])


def read_outputs(
    run_dir: Path, job_id: str, split: str, tasks: Iterable[str] | None = None, num_labels: dict[str, int] | None = None
) -> dict[str, TaskOutputs]:
    """{task: TaskOutputs} of adapter ``job_id`` on ``split`` (only ``tasks`` if given)."""
    path = RunLayout(run_dir).output(job_id)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: adapter {job_id!r} has not been trained/evaluated yet")
    table = pq.read_table(path, filters=[("split", "=", split)])
    want = set(tasks) if tasks is not None else None
    out: dict[str, TaskOutputs] = {}
    names = table.column("task").to_numpy(zero_copy_only=False)
    for name in sorted(set(names.tolist())):
        if want is not None and name not in want:
            continue
        sub = table.filter(pc.equal(table["task"], name))
        sids = sub.column("sample_id").to_numpy(zero_copy_only=False).astype(str)
        order = np.argsort(sids, kind="stable")
        logits = np.stack([np.asarray(v, np.float64) for v in sub.column("logits").to_pylist()])
        width = num_labels[name] if num_labels else int(np.isfinite(logits).all(0).sum())
        if len(np.unique(sids)) != len(sids):
            raise DataError(f"{path}: duplicate sample ids in task {name!r} ({split})")
        out[name] = TaskOutputs(sids[order], sub.column("label_id").to_numpy().astype(np.int64)[order], logits[order, :width])
    if want is not None and (missing := sorted(want - set(out))):
        raise DataError(f"{path}: no {split} outputs for tasks {missing}")
    return out


def compose(
    base: dict[str, TaskOutputs], learners: Sequence[tuple[dict[str, TaskOutputs], float]], reference: dict[str, TaskOutputs] | None
) -> dict[str, TaskOutputs]:
    """z_base + Σ coef·(z_learner − z_ref), task by task, aligned by sample id."""
    if learners and reference is None:
        raise ValueError("boosting learners need the θ* reference outputs")
    out: dict[str, TaskOutputs] = {}
    for name, b in base.items():
        z = b.logits.copy()
        for outs, coef in learners:
            z += coef * (outs[name].align_to(b.sample_ids, f"learner outputs ({name})").logits
                         - reference[name].align_to(b.sample_ids, f"θ* outputs ({name})").logits)  # type: ignore[index]
        out[name] = TaskOutputs(b.sample_ids, b.labels, z)
    return out


def log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    s = z - m
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def gold_prob(o: TaskOutputs) -> np.ndarray:
    return np.exp(log_softmax(o.logits)[np.arange(len(o)), o.labels])


def log_loss(outs: dict[str, TaskOutputs]) -> float:
    """Mean cross-entropy over all samples of all tasks in ``outs``."""
    total, n = 0.0, 0
    for o in outs.values():
        if len(o):
            total += float(-log_softmax(o.logits)[np.arange(len(o)), o.labels].sum())
            n += len(o)
    return total / max(n, 1)


def accuracy(o: TaskOutputs) -> float:
    return float((o.logits.argmax(1) == o.labels).mean()) if len(o) else float("nan")
