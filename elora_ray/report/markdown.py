"""``report.md``: the run report, rendered from ``report.json``."""

from __future__ import annotations


def render_report_md(report: dict) -> str:
    m = report["model"]
    lines = [
        "# elora run report",
        "",
        f"Stages: {', '.join(report['stages'])}; work time {sum(report['stage_seconds'].values()):.1f} s"
        + (f" (this invocation {report['wall_s']} s found {', '.join(report['stages_skipped'])} current and skipped "
           "them; their times are those of the run that did the work)." if report.get("stages_skipped") else "."),
        "",
        "## Tasks",
        "",
        "| task | labels | train | validation | test | truncated | notes |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, t in report["tasks"].items():
        s = t["sizes"]
        tr = m["truncated"].get(name, {"count": 0})
        lines.append(
            f"| {name} | {', '.join(t['labels'])} | {s['train']} | {s['validation']} | {s['test']} | "
            f"{tr['count']} | {'; '.join(t['notes'])} |"
        )
    lines += [
        "",
        "## Model",
        "",
        f"- model: `{m['model']}` ({m['kind']}), loaded from `{m['model_dir']}`",
        f"- adapter: `{m['adapter']['type']}` rank {m['adapter']['rank']}"
        + (" over a 4-bit base" if m["quantized_base"] else ""),
        f"- parameters: base {m['base_parameters']:,}; adapter {m['adapter_parameters']:,}; "
        f"adapter + task heads {m['trainable_parameters_with_heads']:,}",
        f"- initial mixed-batch loss: {m['initial_loss']:.4f}",
        "",
    ]
    if "featurize" in report:
        f, e, c = report["featurize"], report["estimate"], report["clustering"]
        lines += [
            "## Task affinity grouping (Algorithm 1)",
            "",
            f"- featurize: {f['samples']:,} samples, gradients of {f['gradient_parameters']:,} adapter parameters "
            f"projected to d={f['dim']} ({f['seconds']} s, {f['flops']:.3g} FLOPs)",
            f"- estimate: {e['num_subsets']} subsets of {e['subset_size']} tasks, pair coverage "
            f"{100 * e['coverage']:.0f}% ({e['seconds']} s); affinity: `affinity.csv`, heatmap `plots/affinity.png`",
            f"- cluster: m={c['m']} by {c['method']} (average density {c['score']:.4g})"
            + (f"; fallback reason: {c['reason']}" if c.get("reason") else "")
            + (f"; adjusted Rand index vs the planted groups: {c['planted_ari']:.3f}" if c.get("planted_ari") is not None else ""),
            "",
            "| group | tasks |",
            "|---:|---|",
        ]
        lines += [f"| {i} | {', '.join(g)} |" for i, g in enumerate(report["groups"])]
        lines.append("")
    if "methods" in report:
        lines += render_methods_md(report)
    return "\n".join(lines)


def render_methods_md(report: dict) -> list[str]:
    from .plots import METHOD_LABELS

    split = report["evaluation_split"]
    methods, abl = report["methods"], report["ensemble_ablations"]
    lines = ["## Ensemble (Algorithm 2)", ""]
    for b in report["boosting"]:
        lines.append(
            f"- boosting step {b['step'] + 1} ({b['method']}): group {b['group']}, training loss "
            f"{b['train_loss_before']:.4f} → {b['train_loss_after']:.4f}, validation "
            f"{b['validation_loss_before']:.4f} → {b['validation_loss_after']:.4f} (ρ = {b['rho']:.3g}, coefficient {b['coef']:.3g})"
            + (" — ρ = 0: no step along this learner lowered the group's training loss, so it adds nothing to the "
               "ensemble (kept in members.json for the record)" if b["rho"] == 0 else "")
            + (f" — rejected: with its learner the group's validation loss would have been "
               f"{b['validation_loss_with_learner']:.4f}, so it enters with coefficient 0 (boost.keep)" if b.get("rejected") else "")
        )
    if not report["boosting"]:
        lines.append("- no boosting steps (boost.steps = 0)")
    lines += ["", "Combination weights (rows: tasks, columns: groups; `ensemble/weights.json`):", ""]
    m = len(report["groups"])
    lines += ["| task | " + " | ".join(f"G{j}" for j in range(m)) + " |", "|---|" + "---:|" * m]
    lines += [f"| {n} | " + " | ".join(f"{w:.2f}" for w in ws) + " |" for n, ws in report["weights"].items()]
    lines += [
        "",
        f"## Results ({split} split)",
        "",
        "Same data, epochs, learning rate, batch size, early stopping and seed for every method. "
        "FLOPs: training (the ensemble adds featurisation); memory: peak of one training process; "
        "wall: summed adapter-training seconds (the ensemble adds featurize + estimate).",
        "",
        "| method | avg accuracy | 95% CI | train FLOPs | peak memory MB | wall s | adapters | adapter params |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ci(r: dict) -> str:
        return f"{r['ci95'][0]:.3f}–{r['ci95'][1]:.3f}" if r.get("ci95") else "–"

    for name, r in methods.items():
        lines.append(
            f"| {METHOD_LABELS.get(name, name)} | {r['avg_accuracy']:.3f} | {ci(r)} | {r['train_flops']:.3g} | "
            f"{r['peak_memory_mb']:.0f} | {r['wall_s']:.1f} | {r['adapters']} | {r['adapter_parameters']:,} |"
        )
    majority = report.get("majority")
    if majority:
        lines.append(f"| always the most common training label | {majority['avg_accuracy']:.3f} | – | 0 | – | – | – | – |")
    diff = report.get("comparisons", {}).get("ensemble_minus_single_adapter")
    if diff:
        lo, hi = diff["ci95"]
        verdict = ("better" if lo > 0 else "worse" if hi < 0 else "not distinguishable from it")
        lines += ["", f"Ensemble minus single adapter: {diff['difference']:+.3f} average accuracy (paired bootstrap over "
                  f"test samples, 95% CI {lo:+.3f} to {hi:+.3f}): the ensemble is {verdict} on this test set."]
    lines.append("")
    lines.append("Intervals: percentile bootstrap over each task's test samples ("
                 f"{diff['resamples'] if diff else 1000} resamples; where one source line gave several samples, e.g. a "
                 "passage and its questions, whole lines are resampled). With tens of test samples per task, differences "
                 "of a few points are within noise.")
    names = list(methods["ensemble"]["per_task"])
    flagged = {k: set(r.get("tasks_at_majority", [])) for k, r in methods.items()}
    head = "| task | " + " | ".join(METHOD_LABELS.get(k, k) for k in methods) + (" | most common label |" if majority else " |")
    lines += ["", "Per task (`=` marks a task where the method does no better than always predicting the most common "
              "training label):", "", head, "|---|" + "---:|" * (len(methods) + (1 if majority else 0))]
    for n in names:
        cells = [f"{methods[k]['per_task'].get(n, float('nan')):.3f}{' =' if n in flagged[k] else ''}" for k in methods]
        if majority:
            mj = majority["per_task"][n]
            cells.append(f"{mj['accuracy']:.3f} ({mj['label']}, n={mj['samples']})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    at_floor = flagged.get("ensemble", set())
    if at_floor:
        lines += ["", f"The ensemble predicts no better than the most common label on {len(at_floor)} of {len(names)} "
                  f"task(s): {', '.join(sorted(at_floor))}. More training data or epochs, or a larger model, are needed "
                  "there; its accuracy on them says nothing about transfer."]
    labels = {"groups_only": "group adapters only (own group, no boosting)", "groups_boosted": "own group with boosting",
              "uniform_weights": "uniform weights over groups", "theta_star": "θ* (probed heads, no fine-tuning)"}
    lines += ["", "Ensemble ablations (same adapters, different combination):", "", "| variant | avg accuracy | log loss |", "|---|---:|---:|"]
    lines.append(f"| learned weights + boosting (the ensemble) | {methods['ensemble']['avg_accuracy']:.4f} | {methods['ensemble']['loss']:.4f} |")
    for k, r in abl.items():
        lines.append(f"| {labels.get(k, k)} | {r['avg_accuracy']:.4f} | {r['loss']:.4f} |")
    lines += ["", "Plots: `plots/affinity.png`, `plots/per_task_accuracy.png`, `plots/cost_vs_accuracy.png`.", ""]
    return lines
