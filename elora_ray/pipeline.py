"""``elora run``: the stages in order, each resumable from the run directory's artifacts.

Stages: prepare (data) → model check → featurize → estimate → cluster → train (group
adapters) → boost → combine (weights) → baselines → evaluate. Every stage skips itself when
its artifacts match the current configuration, so rerunning a command resumes.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .config import RunConfig, dump_config
from .io import write_json, write_text
from .models.check import check_model
from .prepare import prepare, read_prepared
from .runlog import setup_logging

log = logging.getLogger(__name__)
STAGES = ("prepare", "model_check", "featurize", "estimate", "cluster", "train", "boost", "combine", "baselines", "evaluate")


def init_run_dir(cfg: RunConfig, out: Path) -> None:
    """Create the run directory and start its log (``run.log``); nothing else is written yet."""
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)


def write_run_config(cfg: RunConfig, out: Path) -> None:
    """Record the resolved config, once the data has been validated (a bad config or bad data
    must leave the previous run's ``config.yaml`` and artifacts as they were)."""
    write_text(out / "config.yaml", dump_config(cfg))


def run_stages(cfg: RunConfig, out: Path, until: str = "cluster", force: bool = False, force_last: bool = False) -> dict:
    """Run the stages up to and including ``until``; returns {stage: result, "_seconds": {...}}."""
    until = until.replace("-", "_")
    if until not in STAGES:
        raise ValueError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}")
    init_run_dir(cfg, out)
    results: dict = {}
    seconds: dict[str, float] = {}
    last = STAGES.index(until)
    for i, stage in enumerate(STAGES[: last + 1]):
        f = force or (force_last and i == last)
        t = time.perf_counter()
        if stage == "prepare":
            results[stage] = prepare(cfg, out, force=f)
            write_run_config(cfg, out)
        elif stage == "model_check":
            results[stage] = check_model(cfg, read_prepared(out), out)
        elif stage == "featurize":
            from .featurize import featurize

            results[stage] = featurize(cfg, out, force=f)
        elif stage == "estimate":
            from .estimate import estimate

            results[stage] = estimate(cfg, out, force=f)
        elif stage == "cluster":
            from .cluster.stage import cluster_stage

            results[stage] = cluster_stage(cfg, out, force=f)
        elif stage == "train":
            from .train.stage import train_stage

            results[stage] = train_stage(cfg, out, force=f)
        elif stage == "boost":
            from .boost.stage import boost_stage

            results[stage] = boost_stage(cfg, out, force=f)
        elif stage == "combine":
            from .ensemble.stage import combine_stage

            results[stage] = combine_stage(cfg, out, force=f)
        elif stage == "baselines":
            from .baselines.stage import baselines_stage

            results[stage] = baselines_stage(cfg, out, force=f)
        elif stage == "evaluate":
            from .evaluate.stage import evaluate_stage

            results[stage] = evaluate_stage(cfg, out)
        seconds[stage] = round(time.perf_counter() - t, 2)
        record_stage_metrics(cfg, out, stage, results[stage])
    results["_seconds"] = seconds
    return results


def stage_metrics(stage: str, result: dict) -> dict[str, list[tuple[int, dict]]]:
    """The scalars worth plotting from a stage's result: {scope: [(step, metrics), ...]}."""
    if stage == "featurize":
        keys = ("samples", "tokens", "flops", "seconds", "samples_per_s_this_run", "shards_resumed")
        return {"stages/featurize": [(0, {k: result.get(k) for k in keys})]}
    if stage == "estimate":
        return {"stages/estimate": [(0, {k: result.get(k) for k in ("num_subsets", "subset_size", "coverage", "seconds")})]}
    if stage == "cluster":
        return {"stages/cluster": [(0, {"m": result.get("m"), "average_density": result.get("score")})]}
    if stage == "boost":
        keys = ("train_loss_before", "train_loss_after", "validation_loss_before", "validation_loss_after", "rho", "coef")
        return {"stages/boost": [(s["step"] + 1, {k: s.get(k) for k in keys}) for s in result.get("steps", [])]}
    if stage == "evaluate":
        out: dict[str, list[tuple[int, dict]]] = {}
        for name, r in result.get("methods", {}).items():
            m = {k: r.get(k) for k in ("avg_accuracy", "loss", "train_flops", "peak_memory_mb", "wall_s")}
            m.update({f"accuracy/{t}": a for t, a in r.get("per_task", {}).items()})
            out[f"evaluate/{name}"] = [(0, m)]
        return out
    return {}


def record_stage_metrics(cfg: RunConfig, out: Path, stage: str, result: dict) -> None:
    """Log a stage's scalars (once per distinct result, so resumed reruns add nothing) and sync MLflow."""
    import hashlib

    from .observe import METRICS_DIR, log_metrics, sync_mlflow

    scopes = stage_metrics(stage, result) if isinstance(result, dict) else {}
    if scopes:
        seen_path = out / METRICS_DIR / "stages_logged.json"
        seen = json.loads(seen_path.read_text()) if seen_path.is_file() else {}
        digest = hashlib.sha256(json.dumps(scopes, sort_keys=True, default=str).encode()).hexdigest()[:16]
        if seen.get(stage) != digest:
            for scope, rows in scopes.items():
                for step, metrics in rows:
                    log_metrics(out, scope, metrics, step, cfg.report_to)
            write_json(seen_path, {**seen, stage: digest})
    sync_mlflow(out, cfg)


def run_pipeline(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    t0 = time.perf_counter()
    res = run_stages(cfg, out, "evaluate", force=force)
    feats, est, groups = res["featurize"], res["estimate"], res["cluster"]
    evaluation = res["evaluate"]
    report = {
        "stages": list(res["_seconds"]),
        "stage_seconds": res["_seconds"],
        "wall_s": round(time.perf_counter() - t0, 2),
        "tasks": res["prepare"]["tasks"],
        "model": res["model_check"],
        "featurize": {k: feats[k] for k in ("dim", "samples", "tokens", "flops", "gradient_parameters", "seconds")},
        "estimate": {k: est[k] for k in ("num_subsets", "subset_size", "coverage", "metric", "seconds")},
        "groups": groups["groups"],
        "clustering": {k: groups.get(k) for k in ("m", "score", "method", "reason", "planted_ari")},
        "boosting": [
            {k: s[k] for k in ("step", "group", "job", "method", "train_loss_before", "train_loss_after",
                               "validation_loss_before", "validation_loss_after", "rho", "coef")}
            for s in res["boost"]["steps"]
        ],
        "weights": {n: t["weights"] for n, t in res["combine"]["tasks"].items()},
        "evaluation_split": evaluation["split"],
        "methods": evaluation["methods"],
        "ensemble_ablations": evaluation["ensemble_ablations"],
    }
    from .report.plots import plot_cost_accuracy, plot_per_task_accuracy

    plot_per_task_accuracy(report["methods"], out / "plots" / "per_task_accuracy.png", split=evaluation["split"])
    plot_cost_accuracy(report["methods"], out / "plots" / "cost_vs_accuracy.png", split=evaluation["split"])
    report["plots"] = ["plots/affinity.png", "plots/per_task_accuracy.png", "plots/cost_vs_accuracy.png"]
    write_json(out / "report.json", report)
    write_text(out / "report.md", render_report_md(report))
    log.info("run finished in %.1fs; report: %s", report["wall_s"], out / "report.md")
    return report


def render_report_md(report: dict) -> str:
    m = report["model"]
    lines = [
        "# elora run report",
        "",
        f"Stages run: {', '.join(report['stages'])} ({report['wall_s']} s).",
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
    from .report.plots import METHOD_LABELS

    split = report["evaluation_split"]
    methods, abl = report["methods"], report["ensemble_ablations"]
    lines = ["## Ensemble (Algorithm 2)", ""]
    for b in report["boosting"]:
        lines.append(
            f"- boosting step {b['step'] + 1} ({b['method']}): group {b['group']}, training loss "
            f"{b['train_loss_before']:.4f} → {b['train_loss_after']:.4f}, validation "
            f"{b['validation_loss_before']:.4f} → {b['validation_loss_after']:.4f} (ρ = {b['rho']:.3g}, coefficient {b['coef']:.3g})"
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
        "| method | avg accuracy | train FLOPs | peak memory MB | wall s | adapters | adapter params |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in methods.items():
        lines.append(
            f"| {METHOD_LABELS.get(name, name)} | {r['avg_accuracy']:.4f} | {r['train_flops']:.3g} | "
            f"{r['peak_memory_mb']:.0f} | {r['wall_s']:.1f} | {r['adapters']} | {r['adapter_parameters']:,} |"
        )
    names = list(methods["ensemble"]["per_task"])
    lines += ["", "Per task:", "", "| task | " + " | ".join(METHOD_LABELS.get(k, k) for k in methods) + " |",
              "|---|" + "---:|" * len(methods)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{methods[k]['per_task'].get(n, float('nan')):.3f}" for k in methods) + " |")
    labels = {"groups_only": "group adapters only (own group, no boosting)", "groups_boosted": "own group with boosting",
              "uniform_weights": "uniform weights over groups", "theta_star": "θ* (probed heads, no fine-tuning)"}
    lines += ["", "Ensemble ablations (same adapters, different combination):", "", "| variant | avg accuracy | log loss |", "|---|---:|---:|"]
    lines.append(f"| learned weights + boosting (the ensemble) | {methods['ensemble']['avg_accuracy']:.4f} | {methods['ensemble']['loss']:.4f} |")
    for k, r in abl.items():
        lines.append(f"| {labels.get(k, k)} | {r['avg_accuracy']:.4f} | {r['loss']:.4f} |")
    lines += ["", "Plots: `plots/affinity.png`, `plots/per_task_accuracy.png`, `plots/cost_vs_accuracy.png`.", ""]
    return lines


def load_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())
