"""Report figures: per-task accuracy of every method, and training cost vs accuracy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

METHOD_LABELS = {
    "ensemble": "EnsembleLoRA (ours)",
    "single_adapter": "single adapter",
    "single_qlora": "single adapter, 4-bit base",
    "per_task_adapters": "per-task adapters",
    "mtl_ft": "MTL-FT",
    "random_groups": "random groups",
    "gradient_cosine": "gradient-cosine groups",
}


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_per_task_accuracy(methods: dict[str, dict], path: Path, split: str = "test") -> Path:
    """Grouped bars: one group per task (plus the average), one bar per method."""
    plt = _plt()
    names = list(next(iter(methods.values()))["per_task"])
    cols = names + ["average"]
    k = len(methods)
    width = 0.8 / max(k, 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(cols) * max(1, k / 3)), 4.5))
    x = np.arange(len(cols))
    for i, (m, r) in enumerate(methods.items()):
        vals = [r["per_task"].get(n, np.nan) for n in names] + [r["avg_accuracy"]]
        ax.bar(x + (i - (k - 1) / 2) * width, vals, width, label=METHOD_LABELS.get(m, m))
    lo = min(min(r["per_task"].values()) for r in methods.values())
    ax.set_ylim(max(0.0, lo - 0.1), 1.0)
    ax.set_xticks(x, cols, rotation=35, ha="right")
    ax.set_ylabel(f"{split} accuracy")
    ax.set_title(f"Per-task {split} accuracy by method")
    ax.legend(fontsize=8, ncol=min(4, k), loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_cost_accuracy(methods: dict[str, dict], path: Path, split: str = "test") -> Path:
    """Average accuracy against training FLOPs (marker size: adapter parameters served)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sizes = np.array([max(r.get("adapter_parameters", 1), 1) for r in methods.values()], float)
    sizes = 40 + 260 * sizes / sizes.max()
    for (m, r), s in zip(methods.items(), sizes):
        ax.scatter(r["train_flops"], r["avg_accuracy"], s=s, alpha=0.75, label=METHOD_LABELS.get(m, m),
                   marker="*" if m == "ensemble" else "o")
        ax.annotate(METHOD_LABELS.get(m, m), (r["train_flops"], r["avg_accuracy"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (log scale; ensemble includes featurisation)")
    ax.set_ylabel(f"average {split} accuracy")
    ax.set_title("Cost vs accuracy (marker size: adapter parameters served)")
    ax.grid(alpha=0.3)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
