"""``elora run``: the stages in order, each resumable from the run directory's artifacts.

Stages so far: prepare (data) → model check → featurize → estimate → cluster. Later stages
(train, boost, combine, evaluate) are appended here as they land. Every stage skips itself
when its artifacts match the current configuration, so rerunning a command resumes.
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
STAGES = ("prepare", "model_check", "featurize", "estimate", "cluster")


def init_run_dir(cfg: RunConfig, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
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
        seconds[stage] = round(time.perf_counter() - t, 2)
    results["_seconds"] = seconds
    return results


def run_pipeline(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    t0 = time.perf_counter()
    res = run_stages(cfg, out, "cluster", force=force)
    feats, est, groups = res["featurize"], res["estimate"], res["cluster"]
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
    }
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
    return "\n".join(lines)


def load_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())
