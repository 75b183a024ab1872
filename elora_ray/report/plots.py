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


def _save_and_close(fig, path: Path) -> Path:
    try:
        return _save(fig, path)
    finally:
        _plt().close(fig)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_per_task_accuracy(methods: dict[str, dict], path: Path, split: str = "test",
                           majority: dict[str, dict] | None = None) -> Path:
    """See :func:`per_task_accuracy_figure`; saved to ``path``."""
    return _save_and_close(per_task_accuracy_figure(methods, split, majority), path)


def per_task_accuracy_figure(methods: dict[str, dict], split: str = "test", majority: dict[str, dict] | None = None):
    """Grouped bars: one group per task (plus the average), one bar per method, on the full 0–1 axis.

    A black tick over each task marks the accuracy of always predicting its most common training label
    (``majority``); the average's bars carry each method's 95% bootstrap interval when it is known.
    The legend sits outside the axes, above them."""
    plt = _plt()
    names = list(next(iter(methods.values()))["per_task"])
    cols = names + ["average"]
    k = len(methods)
    width = 0.8 / max(k, 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(cols) * max(1, k / 3)), 4.8))
    x = np.arange(len(cols))
    for i, (m, r) in enumerate(methods.items()):
        vals = [r["per_task"].get(n, np.nan) for n in names] + [r["avg_accuracy"]]
        pos = x + (i - (k - 1) / 2) * width
        ax.bar(pos, vals, width, label=METHOD_LABELS.get(m, m))
        if r.get("ci95"):
            lo, hi = r["ci95"]
            ax.errorbar(pos[-1], r["avg_accuracy"], yerr=[[max(r["avg_accuracy"] - lo, 0.0)], [max(hi - r["avg_accuracy"], 0.0)]],
                        fmt="none", ecolor="black", elinewidth=1, capsize=2)
    if majority:
        per = majority.get("per_task", majority)
        ys = [per[n]["accuracy"] if n in per else np.nan for n in names]
        if "avg_accuracy" in majority:
            ys.append(majority["avg_accuracy"])
        ax.hlines(ys, x[: len(ys)] - 0.45, x[: len(ys)] + 0.45, colors="black", linewidth=2,
                  label="always the most common label")
    ax.set_ylim(0.0, 1.0)
    ax.set_xticks(x, cols, rotation=35, ha="right")
    ax.set_ylabel(f"{split} accuracy")
    ax.set_title(f"Per-task {split} accuracy by method", pad=30 + 12 * ((k + 1) // 4))
    ax.legend(fontsize=8, ncol=min(4, k + 1), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_cost_accuracy(methods: dict[str, dict], path: Path, split: str = "test",
                       majority: dict[str, dict] | None = None) -> Path:
    """See :func:`cost_accuracy_figure`; saved to ``path``."""
    return _save_and_close(cost_accuracy_figure(methods, split, majority), path)


def cost_accuracy_figure(methods: dict[str, dict], split: str = "test", majority: dict[str, dict] | None = None):
    """Average accuracy (with its 95% interval) against training FLOPs; marker area: adapter parameters
    served (legend of sizes below the axes); the most-common-label level as a dashed line; labels
    placed in a column beside the points, joined by thin leaders, so they never overlap."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    params = np.array([max(r.get("adapter_parameters", 1), 1) for r in methods.values()], float)
    area = lambda p: 40 + 260 * p / params.max()  # noqa: E731
    items = list(methods.items())
    colors = []
    for (m, r), p in zip(items, params):
        pts = ax.scatter(r["train_flops"], r["avg_accuracy"], s=area(p), alpha=0.75, marker="*" if m == "ensemble" else "o",
                         zorder=3)
        colors.append(pts.get_facecolor()[0])
        if r.get("ci95"):
            lo, hi = r["ci95"]
            ax.errorbar(r["train_flops"], r["avg_accuracy"], yerr=[[max(r["avg_accuracy"] - lo, 0.0)], [max(hi - r["avg_accuracy"], 0.0)]],
                        fmt="none", ecolor="gray", elinewidth=1, capsize=2, zorder=2)
    if majority and "avg_accuracy" in majority:
        ax.axhline(majority["avg_accuracy"], color="black", linestyle="--", linewidth=1)
        ax.annotate("always the most common label", (0.01, majority["avg_accuracy"]), xycoords=("axes fraction", "data"),
                    fontsize=7, va="bottom")
    # labels in a column right of the axes, at their points' heights pushed apart to a minimum gap
    lo, hi = ax.get_ylim()
    gap = 0.055 * (hi - lo)
    order = sorted(range(len(items)), key=lambda j: items[j][1]["avg_accuracy"])
    ys = [items[j][1]["avg_accuracy"] for j in order]
    for a in range(1, len(ys)):
        ys[a] = max(ys[a], ys[a - 1] + gap)
    overflow = ys[-1] - (hi - gap / 2) if ys else 0.0
    ys = [y - max(overflow, 0.0) for y in ys]
    for y, j in zip(ys, order):
        m, r = items[j]
        ax.annotate(METHOD_LABELS.get(m, m), xy=(r["train_flops"], r["avg_accuracy"]), xycoords="data",
                    xytext=(1.03, y), textcoords=("axes fraction", "data"), fontsize=7, va="center", color=colors[j],
                    arrowprops={"arrowstyle": "-", "color": colors[j], "lw": 0.6, "alpha": 0.6})
    for p in sorted({params.min(), params.max()}):
        ax.scatter([], [], s=area(p), color="gray", alpha=0.5, label=f"{int(p):,} adapter parameters")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False,
              title="marker area", title_fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (log scale; ensemble includes featurisation)")
    ax.set_ylabel(f"average {split} accuracy (95% interval)")
    ax.set_title("Cost vs accuracy")
    ax.grid(alpha=0.3)
    return fig
