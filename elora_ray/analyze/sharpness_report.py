"""Summary, markdown and plot of the sharpness analysis (``analyze/sharpness/``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ..config import RunConfig
from ..io import atomic_path


def _to_arrow(table: pd.DataFrame):
    import pyarrow as pa

    return pa.Table.from_pandas(table, preserve_index=False)


def _spearman(a, b) -> float | None:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def summarize(table: pd.DataFrame, cfg: RunConfig, seed: int) -> dict:
    """Correlations of sharpness with the gap, and the ensembles' change vs the single adapter of
    the same total rank (the paper's "−44% gap, −74% trace for k = 2")."""
    s = cfg.analyze.sharpness
    total = s.resolved_total_rank()
    per_task = {}
    for task, g in table.groupby("task", sort=False):
        ref = g[(g.k == 1) & (g["rank"] == total)].iloc[0]
        ens = {}
        for _, r in g[g.k > 1].iterrows():
            ens[r.variant] = {
                "gap_change": _rel(r.gap, ref.gap), "trace_max_change": _rel(r.trace_max, ref.trace_max),
                "trace_mean_change": _rel(r.trace_mean, ref.trace_mean),
                "test_loss_change": _rel(r.test_loss, ref.test_loss),
            }
        singles = g[g.k == 1].sort_values("rank")
        per_task[task] = {
            "spearman_trace_max_gap": _spearman(g.trace_max, g.gap),
            "spearman_trace_mean_gap": _spearman(g.trace_mean, g.gap),
            "best_rank_by_gap": int(singles.iloc[int(np.argmin(singles.gap.values))]["rank"]),
            "ensemble_vs_single_total_rank": ens,
        }
    return {
        "settings": {**s.model_dump(mode="json"), "total_rank": total, "seed": seed, "adapter": cfg.adapter.type,
                     "model": cfg.model.name_or_path},
        "spearman_trace_max_gap": _spearman(table.trace_max, table.gap),
        "spearman_trace_mean_gap": _spearman(table.trace_mean, table.gap),
        "per_task": per_task,
    }


def _rel(x: float, ref: float) -> float | None:
    return None if ref == 0 or not np.isfinite(ref) else float((x - ref) / abs(ref))


def summary_markdown(table: pd.DataFrame, summary: dict) -> str:
    st = summary["settings"]
    lines = [
        f"# Sharpness and generalization gap ({st['model']}, {st['adapter']})",
        "",
        f"Each adapter trained {st['epochs']:g} epochs (lr {st['lr']:g}, batch {st['batch_size']}); ensembles: k adapters "
        f"of rank {st['total_rank']}/k, seeds seed+j, logits averaged with weights fitted on validation. "
        f"Gap = test loss − training loss. Hessian trace w.r.t. the adapter weights, Hutchinson with "
        f"{st['probes']} probes at {st['points']} training points: max (the paper's measure) and mean over points.",
        "",
        "| task | variant | adapter params | train loss | test loss | gap | test acc | trace max | trace mean |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for _, r in table.iterrows():
        lines.append(
            f"| {r.task} | {r.variant} | {r.adapter_parameters:,} | {r.train_loss:.3f} | {r.test_loss:.3f} | "
            f"{r.gap:.3f} | {r.test_accuracy:.3f} | {r.trace_max:.3g} ± {r.trace_max_stderr:.2g} | "
            f"{r.trace_mean:.3g} ± {r.trace_mean_stderr:.2g} |"
        )
    lines += ["", "| task | Spearman(trace max, gap) | Spearman(trace mean, gap) | rank with the smallest gap | "
              "ensemble vs one adapter of the total rank |", "|---|---:|---:|---:|---|"]
    for task, p in summary["per_task"].items():
        ens = "; ".join(
            f"{v}: gap {_pct(c['gap_change'])}, trace max {_pct(c['trace_max_change'])}"
            for v, c in p["ensemble_vs_single_total_rank"].items()
        ) or "—"
        lines.append(f"| {task} | {_fmt(p['spearman_trace_max_gap'])} | {_fmt(p['spearman_trace_mean_gap'])} | "
                     f"{p['best_rank_by_gap']} | {ens} |")
    lines += ["", f"All tasks: Spearman(trace max, gap) = {_fmt(summary['spearman_trace_max_gap'])}, "
              f"Spearman(trace mean, gap) = {_fmt(summary['spearman_trace_mean_gap'])}.", ""]
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.0f}%"


def plot_sharpness(table: pd.DataFrame, path: Path, cfg: RunConfig) -> None:
    """Per task: gap and trace vs rank (singles), and vs k at the fixed total rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total = cfg.analyze.sharpness.resolved_total_rank()
    tasks = list(dict.fromkeys(table.task))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.6 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        g = table[table.task == task]
        singles = g[g.k == 1].sort_values("rank")
        ens = pd.concat([g[(g.k == 1) & (g["rank"] == total)], g[g.k > 1]]).sort_values("k")
        for ax, data, x, xlabel in (
            (axes[row][0], singles, singles["rank"], "adapter rank"),
            (axes[row][1], ens, ens["k"], f"k adapters (total rank {total})"),
        ):
            ax.plot(x, data.gap, "o-", color="tab:blue", label="gap (test − train loss)")
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(x), [str(v) for v in x])
            ax.set_xlabel(xlabel)
            ax.set_ylabel("generalization gap", color="tab:blue")
            tw = ax.twinx()
            tw.errorbar(x, data.trace_max, yerr=data.trace_max_stderr, fmt="s--", color="tab:red", capsize=3,
                        label="Hessian trace (max over points)")
            tw.set_ylabel("Hessian trace", color="tab:red")
            ax.set_title(task)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
