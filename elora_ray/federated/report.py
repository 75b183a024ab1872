"""``federated/report.{json,md}``, ``per_client.csv`` and the test-loss plot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config import RunConfig
from ..io import atomic_path, write_json, write_text

LABELS = {"base": "base model (θ*, no fine-tuning)", "fedavg": "FedAvg, one adapter", "mtl_ft": "MTL-FT (FedAvg + per-client FT)",
          "ensemble": "EnsembleLoRA (federated)", "random_groups": "random groups (same sizes)"}


def write_report(cfg: RunConfig, fed: Path, meta: dict, workers: int, flops_per_window: dict[str, float],
                 rows: dict[str, dict], wall: float) -> dict:
    """Write the report of the methods' ``rows`` under ``fed``; ``meta``: the clients (``clients.json``)."""
    per_client = pd.DataFrame({m: pd.Series(r["per_client"]) for m, r in rows.items()})
    per_client.index.name = "client"
    with atomic_path(fed / "per_client.csv") as tmp:
        per_client.to_csv(tmp)
    methods = {m: {k: v for k, v in r.items() if k != "per_client"} for m, r in rows.items()}
    ref = methods.get("fedavg")
    mtl = methods.get("mtl_ft")
    for m, r in methods.items():
        if ref:
            r["test_loss_vs_fedavg_pct"] = 100.0 * (r["test_loss"] - ref["test_loss"]) / ref["test_loss"]
        if mtl and mtl["train_flops"]:
            r["flops_vs_mtl_ft"] = r["train_flops"] / mtl["train_flops"]
    report = {"clients": meta["num_clients"], "roles": meta["roles"], "windows": meta["windows"],
              "model": cfg.model.name_or_path, "adapter": cfg.adapter.type, "rounds": cfg.federated.rounds,
              "client_fraction": cfg.federated.client_fraction, "workers": workers,
              "flops_per_window": flops_per_window, "wall_s": wall, "methods": methods}
    write_json(fed / "report.json", report)
    lines = [f"# Federated run: {report['clients']} clients ({report['roles']} roles)", "",
             f"Model `{cfg.model.name_or_path}`, adapter `{cfg.adapter.type}`, {cfg.federated.rounds} rounds, "
             f"client fraction {cfg.federated.client_fraction}, {cfg.federated.context_tokens}-token windows "
             f"(train {report['windows']['train']}, validation {report['windows']['validation']}, test {report['windows']['test']}).",
             "", "| method | test loss (mean over clients) | pooled | vs FedAvg | train FLOPs | FLOPs vs MTL-FT | peak memory MB | wall s | adapters |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m, r in methods.items():
        lines.append(f"| {LABELS.get(m, m)} | {r['test_loss']:.4f} | {r['test_loss_pooled']:.4f} | "
                     f"{r.get('test_loss_vs_fedavg_pct', float('nan')):+.1f}% | {r['train_flops']:.3g} | "
                     f"{r.get('flops_vs_mtl_ft', float('nan')):.2f}× | {r['peak_memory_mb']:.0f} | {r['wall_s']:.0f} | {r['adapters']} |")
    if "ensemble" in methods:
        e = methods["ensemble"]
        start = ("start from the FedAvg adapter, which is also a candidate in every combination "
                 f"(mean weight {e.get('weight_on_fedavg', 0.0):.2f})") if e.get("warm_start") else "start from θ*"
        lines += ["", f"Ensemble: {e['groups']} groups ({start}), {len(e['boost'])} boosting step(s); own-group "
                  f"predictors only (no learned weights): test loss {e['ablation_own_group_test_loss']:.4f}."]
    groups_file = fed / "groups.json"
    if groups_file.is_file():
        import json

        g = json.loads(groups_file.read_text())
        report["grouping"] = {k: g[k] for k in ("m", "affinity", "method", "agreement_with_sources", "pair_coverage")
                              if k in g}
        write_json(fed / "report.json", report)
        line = f"Grouping: {g.get('affinity', 'paper')} affinity, m = {g['m']} ({g['method']})"
        if "agreement_with_sources" in g:
            a = g["agreement_with_sources"]
            line += (f"; against the clients' {a['sources']} sources: ARI {a['ari']:.2f}, NMI {a['nmi']:.2f} "
                     "(random groups ≈ 0)")
        lines += ["", line + "."]
    lines += ["", "FLOPs are training-side: measured per window (FlopCounter) × windows processed; evaluation on "
              "the test windows is not counted. Peak memory is the largest client-worker RSS during the method."]
    write_text(fed / "report.md", "\n".join(lines) + "\n")
    _plot(methods, fed / "plots" / "federated_test_loss.png")
    return report


def _plot(methods: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(methods)
    labels = [LABELS.get(n, n).split(" (")[0] for n in names]
    losses = [methods[n]["test_loss"] for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 * len(names) + 2.2))
    # Horizontal bars from zero (labels never collide; a cut axis would exaggerate differences), value at the end.
    ypos = list(range(len(names)))[::-1]
    axes[0].barh(ypos, losses, color="#4c72b0")
    axes[0].set_yticks(ypos, labels, fontsize=8)
    for y, v in zip(ypos, losses):
        axes[0].text(v, y, f" {v:.3f}", va="center", fontsize=8)
    axes[0].set_xlim(0, max(losses) * 1.18)
    axes[0].set_xlabel("test loss (nats / token, lower is better)")
    axes[0].set_title("test loss by method")
    for i, n in enumerate(names):
        if methods[n]["train_flops"] > 0:
            axes[1].scatter(methods[n]["train_flops"], methods[n]["test_loss"], s=40, color=f"C{i}")
            axes[1].annotate(labels[i], (methods[n]["train_flops"], methods[n]["test_loss"]), fontsize=8,
                             xytext=(6, 6 - 12 * (i % 2)), textcoords="offset points")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("training FLOPs")
    axes[1].set_ylabel("test loss")
    axes[1].set_title("cost vs loss")
    axes[1].margins(x=0.25, y=0.15)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
