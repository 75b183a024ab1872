"""``fidelity/summary.md`` and ``plots/fidelity.png``: how the estimate compares with real fine-tunes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def render_summary(s: dict) -> str:
    c, lo, fo = s["cost"], s["loss"], s["first_order"]
    lines = [
        "# Estimation fidelity",
        "",
        f"{s['subsets']} subsets of {s['subset_size']} of {s['tasks']} tasks; d={s['dim']}; surrogate λ: {s.get('headline', s['estimate_l2'])}; "
        f"real fine-tuning {s['fine_tuning']['epochs']:g} epoch(s), lr {s['fine_tuning']['lr']:g}, "
        f"mean relative distance ‖X−θ*‖/‖θ‖ = {100 * s['fine_tuning']['mean_relative_distance']:.3f}%.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| loss relative error, mean over (S, i) | {100 * lo['relative_error']:.2f}% |",
        f"| Spearman (all (S, i)) | {lo['spearman']:.3f} |",
        f"| Spearman within task, across subsets | {lo['spearman_within_task'] if lo['spearman_within_task'] is None else round(lo['spearman_within_task'], 3)} |",
        f"| Spearman of loss changes vs θ* | {lo['spearman_of_changes']:.3f} |",
        *[x for x in (_ceiling_lines(s["noise_ceiling"]) if s.get("noise_ceiling") else []) if x],
        f"| accuracy relative error{_sigma_text(s)} | {100 * s['accuracy_relative_error']:.2f}% |",
        *_accuracy_lines(s),
        f"| for context: relative error of predicting no change (loss at θ*) | {100 * s['no_change_baseline_relative_error']:.2f}% |",
        f"| for context: accuracy relative error of predicting no change | {100 * s.get('no_change_baseline_accuracy_relative_error', float('nan')):.2f}% |",
        f"| first-order RSS error of h, Σ(h−ĥ)²/Σh² | {fo['rss_relative']:.3e} |",
        f"| unexplained share of the change in h, Σ(h−ĥ)²/Σ(h−h0)² | {fo['unexplained_change']:.3f} |",
        f"| FLOPs: fine-tune these subsets / (featurize + regressions) | {c['flops_ratio_same_subsets']:.1f}× |",
        f"| FLOPs ratio extrapolated to k={c['extrapolated_to_subsets']} subsets | {c['flops_ratio_extrapolated']:.1f}× |",
        f"| wall time ratio, these subsets | {c['seconds_ratio_same_subsets']:.1f}× |",
        f"| wall time ratio extrapolated to k={c['extrapolated_to_subsets']} | {c['seconds_ratio_extrapolated']:.1f}× |",
        "",
        "Surrogate λ sweep (same fine-tuning runs): fixed λ, then `l2: auto` with calibration constant c:",
        "",
        "| λ | relative error | accuracy relative error | Spearman | within task | of changes |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    rows = list(s["by_l2"].items()) + list(s.get("by_calibration_constant", {}).items())
    for l2, a in rows:
        w = "–" if a["spearman_within_task"] is None else f"{a['spearman_within_task']:.3f}"
        acc = f"{100 * a['accuracy_relative_error']:.2f}%" if "accuracy_relative_error" in a else "–"
        lines.append(f"| {l2} | {100 * a['relative_error']:.2f}% | {acc} | {a['spearman']:.3f} | {w} | {a['spearman_of_changes']:.3f} |")
    return "\n".join(lines) + "\n"


def _sigma_text(s: dict) -> str:
    mn = s.get("margin_noise")
    return f" (expected accuracy, margin noise σ = {mn['value']:g} from {mn['source']})" if mn else ""


def _accuracy_lines(s: dict) -> list[str]:
    """The accuracy error with σ = 0 (share of ĥ > 0), against the repeat / the mean of both runs, and per σ."""
    lines = []
    if "accuracy_relative_error_hard" in s:
        lines.append(f"| accuracy relative error, σ = 0 (share of ĥ > 0) | {100 * s['accuracy_relative_error_hard']:.2f}% |")
    nc = s.get("noise_ceiling") or {}
    if "accuracy_relative_error_vs_mean" in nc:
        lines += [
            f"| accuracy relative error against the repeat | {100 * nc['accuracy_relative_error_vs_repeat']:.2f}% |",
            f"| accuracy relative error against the mean of both runs | {100 * nc['accuracy_relative_error_vs_mean']:.2f}% |",
        ]
    head = {**s.get("by_l2", {}), **s.get("by_calibration_constant", {})}.get(s.get("headline"), {})
    sweep = head.get("accuracy_relative_error_by_margin_noise")
    if sweep:
        lines.append("| accuracy relative error by σ | " + ", ".join(f"{k}: {100 * v:.2f}%" for k, v in sweep.items()) + " |")
    return lines


def _ceiling_lines(nc: dict) -> list[str]:
    w = "–" if nc["spearman_within_task"] is None else f"{nc['spearman_within_task']:.3f}"
    return [
        f"| noise ceiling: Spearman within task, real run vs a repeat with another seed ({nc['pairs']} pairs) | {w} |",
        f"| noise ceiling: Spearman overall, real vs repeat | {nc['spearman']:.3f} |" if nc["spearman"] is not None else "",
        f"| noise floor: relative difference of the loss between repeats | {100 * nc['relative_difference']:.2f}% |",
        f"| noise floor: relative difference of the accuracy between repeats | {100 * nc['accuracy_relative_difference']:.2f}% |"
        if "accuracy_relative_difference" in nc else "",
    ]


def plot_fidelity(table: pd.DataFrame, path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    fig, ax = plt.subplots(1, 2, figsize=(10, 4.2))
    for task, g in table.groupby("task"):
        ax[0].scatter(g["true_loss"], g["est_loss"], s=14, label=task)
    lim = [0, float(max(table["true_loss"].max(), table["est_loss"].max())) * 1.05]
    ax[0].plot(lim, lim, "k--", lw=0.8)
    ax[0].set_xlabel("validation loss after real fine-tuning")
    ax[0].set_ylabel("estimated (linearised)")
    ax[0].set_title(f"rel. err {100 * summary['loss']['relative_error']:.1f}%, ρ={summary['loss']['spearman']:.2f}")
    if table["task"].nunique() <= 12:
        ax[0].legend(fontsize=6)
    d_true = table["true_loss"] - table["true_loss0"]
    d_est = table["est_loss"] - table["true_loss0"]
    ax[1].scatter(d_true, d_est, s=14)
    ax[1].axhline(0, color="k", lw=0.5)
    ax[1].axvline(0, color="k", lw=0.5)
    ax[1].set_xlabel("change vs θ*: real")
    ax[1].set_ylabel("change vs θ*: estimated")
    ax[1].set_title(f"ρ of changes = {summary['loss']['spearman_of_changes']:.2f}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
