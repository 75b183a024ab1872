"""Report plots a reader can trust: full 0–1 accuracy axis, legends outside the data, the
most-common-label level drawn, a marker-size legend, method labels that do not overlap."""

from __future__ import annotations

import numpy as np

from elora_ray.report.plots import cost_accuracy_figure, per_task_accuracy_figure


def _methods(n_methods: int = 7, tasks=("a", "b", "c")):
    rng = np.random.default_rng(0)
    out = {}
    names = ["ensemble", "single_adapter", "single_qlora", "per_task_adapters", "mtl_ft", "random_groups", "gradient_cosine"]
    for k in names[:n_methods]:
        per = {t: float(rng.uniform(0.85, 0.95)) for t in tasks}
        avg = float(np.mean(list(per.values())))
        out[k] = {"per_task": per, "avg_accuracy": avg, "ci95": [avg - 0.02, avg + 0.02],
                  "train_flops": float(rng.uniform(1e12, 1e13)), "adapter_parameters": int(rng.integers(10_000, 400_000))}
    # two methods almost on top of each other: their labels must still not collide
    out["single_adapter"].update(avg_accuracy=out["ensemble"]["avg_accuracy"] + 1e-4, train_flops=out["ensemble"]["train_flops"])
    return out


MAJORITY = {"per_task": {t: {"label": "x", "accuracy": 0.5, "samples": 60} for t in "abc"}, "avg_accuracy": 0.5}


def test_per_task_plot_uses_the_full_axis_with_the_legend_above_it_and_the_majority_marks():
    fig = per_task_accuracy_figure(_methods(), majority=MAJORITY)
    ax = fig.axes[0]
    assert ax.get_ylim() == (0.0, 1.0)
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.y0 >= ax.get_window_extent().y1 - 1  # outside the data area
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "always the most common label" in labels
    segments = [c for c in ax.collections if c.get_label() == "always the most common label"][0].get_segments()
    assert len(segments) == 4 and all(np.allclose(s[:, 1], 0.5) for s in segments)  # 3 tasks + the average


def test_cost_plot_labels_never_overlap_and_sizes_have_a_legend():
    fig = cost_accuracy_figure(_methods(), majority=MAJORITY)
    ax = fig.axes[0]
    fig.canvas.draw()
    from matplotlib.text import Text

    labels = [t for t in ax.texts if t.get_text() != "always the most common label"]
    boxes = [Text.get_window_extent(t) for t in labels]  # the text itself, not its leader line
    assert len(boxes) == 7
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (labels[i].get_text(), labels[j].get_text())
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "marker area" and len(legend.get_texts()) == 2
    assert legend.get_window_extent().y1 <= ax.get_window_extent().y0  # below the axes
    assert any(line.get_linestyle() == "--" and np.allclose(line.get_ydata(), 0.5) for line in ax.get_lines())
