"""How much an accuracy means on small test sets: the most-common-label baseline per task and
bootstrap confidence intervals (resampling test samples within each task).

The average accuracy of a method is the mean over tasks of each task's accuracy, so the
bootstrap resamples every task's test samples independently (stratified by task) and
recomputes that mean. A difference between two methods uses the *same* resampled samples for
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


def _indices(sizes: Mapping[str, int], resamples: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.integers(0, n, size=(resamples, n)) for name, n in sorted(sizes.items()) if n > 0}


def bootstrap_average(correct: Mapping[str, np.ndarray], resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                      level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the average (over tasks) accuracy, resampling each task's samples."""
    idx = _indices({k: len(v) for k, v in correct.items()}, resamples, seed)
    per_task = np.stack([correct[k][i].mean(1) for k, i in idx.items()])  # [tasks, resamples]
    avg = per_task.mean(0)
    a = (1 - level) / 2
    return float(np.quantile(avg, a)), float(np.quantile(avg, 1 - a))


def bootstrap_difference(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], resamples: int = DEFAULT_RESAMPLES,
                         seed: int = 0, level: float = LEVEL) -> dict:
    """Average accuracy of ``a`` minus ``b`` on the same samples, with a paired percentile interval."""
    if set(a) != set(b) or any(len(a[k]) != len(b[k]) for k in a):
        raise ValueError("paired bootstrap needs the same tasks and samples for both methods")
    idx = _indices({k: len(v) for k, v in a.items()}, resamples, seed)
    diff = np.stack([(a[k][i] - b[k][i]).mean(1) for k, i in idx.items()]).mean(0)
    q = (1 - level) / 2
    point = float(np.mean([a[k].mean() - b[k].mean() for k in idx]))
    return {"difference": point, "ci95": [float(np.quantile(diff, q)), float(np.quantile(diff, 1 - q))],
            "resamples": resamples}


def at_majority(per_task: Mapping[str, float], majority: Mapping[str, dict], tolerance: float = 1e-9) -> list[str]:
    """Tasks where a method does no better than always predicting the most common label."""
    return sorted(t for t, acc in per_task.items() if t in majority and acc <= majority[t]["accuracy"] + tolerance)
