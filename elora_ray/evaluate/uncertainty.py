"""How much an accuracy means on small test sets: the most-common-label baseline per task and
bootstrap confidence intervals (resampling test samples within each task).

The average accuracy of a method is the mean over tasks of each task's accuracy, so the
bootstrap resamples every task's test samples independently (stratified by task) and
recomputes that mean. Where one source line gave several samples (a MultiRC passage and its
questions), whole lines are resampled instead: their samples are not independent, and
resampling them one by one would give intervals far too narrow. A difference between two methods uses the *same* resampled samples for
both (paired), which is much tighter than comparing two separate intervals.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from ..ensemble.outputs import TaskOutputs
from ..tasks.schema import TaskData

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95


def majority_baseline(tasks: Sequence[TaskData], split: str) -> dict[str, dict]:
    """Per task: the most common *training* label and the accuracy of always predicting it on ``split``."""
    out = {}
    for t in tasks:
        train = Counter(e.label for e in t.splits["train"])
        label = sorted(train.items(), key=lambda kv: (-kv[1], t.labels.index(kv[0])))[0][0] if train else t.labels[0]
        rows = t.splits[split]
        acc = float(np.mean([e.label == label for e in rows])) if rows else float("nan")
        out[t.name] = {"label": label, "accuracy": acc, "samples": len(rows)}
    return out


def correctness(outs: Mapping[str, TaskOutputs]) -> dict[str, np.ndarray]:
    """Per task: 1.0 where the argmax label is right, in sample-id order."""
    return {name: (o.logits.argmax(1) == o.labels).astype(np.float64) for name, o in outs.items()}


Units = Mapping[str, "np.ndarray | None"]
"""Per task: each sample's unit (samples of one source line share it; see ``Example.unit``), aligned
with the correctness arrays, or None when every sample is its own unit."""


def sample_units(tasks: Sequence[TaskData], split: str, outs: Mapping[str, TaskOutputs]) -> dict[str, "np.ndarray | None"]:
    """Per task: the unit of each row of ``outs`` (its sample-id order), or None if the task has none."""
    out: dict[str, np.ndarray | None] = {}
    for t in tasks:
        if t.name not in outs:
            continue
        unit_of = {e.sample_id: e.unit for e in t.splits.get(split, [])}
        if not any(u is not None for u in unit_of.values()):
            out[t.name] = None
            continue
        out[t.name] = np.array([unit_of.get(str(i)) or str(i) for i in outs[t.name].sample_ids])
    return out


def _unit_sums(values: np.ndarray, units: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(sum of ``values`` per unit, samples per unit); without units every sample is one."""
    if units is None:
        return np.asarray(values, np.float64), np.ones(len(values))
    _, inverse = np.unique(np.asarray(units).astype(str), return_inverse=True)
    return np.bincount(inverse, weights=values), np.bincount(inverse).astype(np.float64)


def _resampled_means(values: Mapping[str, np.ndarray], units: Units | None, resamples: int, seed: int) -> np.ndarray:
    """[tasks, resamples]: each task's mean of ``values`` over a bootstrap draw of its units (with
    replacement, as many as it has; a draw's mean weighs each drawn unit by its samples)."""
    rng = np.random.default_rng(seed)
    out = []
    for name in sorted(values):
        v = values[name]
        if len(v) == 0:
            continue
        sums, counts = _unit_sums(v, (units or {}).get(name))
        idx = rng.integers(0, len(sums), size=(resamples, len(sums)))
        out.append(sums[idx].sum(1) / counts[idx].sum(1))
    return np.stack(out)


def bootstrap_average(correct: Mapping[str, np.ndarray], resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                      level: float = LEVEL, units: Units | None = None) -> tuple[float, float]:
    """Percentile interval of the average (over tasks) accuracy, resampling each task's samples (or,
    where ``units`` are given, its units: whole passages whose samples are not independent)."""
    avg = _resampled_means(correct, units, resamples, seed).mean(0)
    a = (1 - level) / 2
    return float(np.quantile(avg, a)), float(np.quantile(avg, 1 - a))


def bootstrap_difference(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], resamples: int = DEFAULT_RESAMPLES,
                         seed: int = 0, level: float = LEVEL, units: Units | None = None) -> dict:
    """Average accuracy of ``a`` minus ``b`` on the same samples, with a paired percentile interval."""
    if set(a) != set(b) or any(len(a[k]) != len(b[k]) for k in a):
        raise ValueError("paired bootstrap needs the same tasks and samples for both methods")
    diff = _resampled_means({k: a[k] - b[k] for k in a}, units, resamples, seed).mean(0)
    q = (1 - level) / 2
    point = float(np.mean([a[k].mean() - b[k].mean() for k in a if len(a[k])]))
    return {"difference": point, "ci95": [float(np.quantile(diff, q)), float(np.quantile(diff, 1 - q))],
            "resamples": resamples}


def at_majority(per_task: Mapping[str, float], majority: Mapping[str, dict], tolerance: float = 1e-9) -> list[str]:
    """Tasks where a method does no better than always predicting the most common label."""
    return sorted(t for t, acc in per_task.items() if t in majority and acc <= majority[t]["accuracy"] + tolerance)
