"""Heatmap of the task affinity matrix with tasks ordered by cluster."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .objective import validate_affinity

#: Above this many tasks the tick labels are left out (they would overlap).
MAX_LABELLED_TASKS = 60


def plot_affinity(T: np.ndarray, names: Sequence[str], groups: Sequence[Sequence[str]], path: str | Path,
                  title: str | None = None) -> Path:
    """Write a PNG heatmap of ``T`` with rows/columns ordered by group and lines at the group boundaries.

    Uses a diverging colormap centred at 0 and a colorbar; task names are tick labels for up to 60 tasks.
    Tasks missing from ``groups`` are appended at the end. The file is written atomically
    (``path.with_suffix('.tmp.png')`` then ``os.replace``). Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    T = validate_affinity(T)
    n = T.shape[0]
    names = [str(x) for x in names]
    if len(names) != n:
        raise ValueError(f"{len(names)} names for a {n}x{n} affinity matrix")
    index = {name: i for i, name in enumerate(names)}
    order: list[int] = []
    bounds: list[int] = []
    for g in groups:
        for name in g:
            if str(name) not in index:
                raise ValueError(f"group member {name!r} is not one of the task names")
            order.append(index[str(name)])
        bounds.append(len(order))
    if len(set(order)) != len(order):
        raise ValueError("a task appears in more than one group")
    placed = set(order)
    order += [i for i in range(n) if i not in placed]
    M = T[np.ix_(order, order)]

    vmax = float(np.abs(M).max()) or 1.0
    size = min(4 + 0.18 * n, 16) if n <= MAX_LABELLED_TASKS else 10
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    try:
        im = ax.imshow(M, cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax),
                       interpolation="nearest")
        for b in bounds[:-1]:
            ax.axhline(b - 0.5, color="black", linewidth=1.2)
            ax.axvline(b - 0.5, color="black", linewidth=1.2)
        if n <= MAX_LABELLED_TASKS:
            fs = max(5, min(10, int(400 / max(n, 1))))
            ax.set_xticks(range(n), [names[i] for i in order], rotation=90, fontsize=fs)
            ax.set_yticks(range(n), [names[i] for i in order], fontsize=fs)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_xlabel("target task j")
        ax.set_ylabel("source task i")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="affinity")
        ax.set_title(title or f"task affinity, {n} tasks in {len(bounds)} groups")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.png")
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path
