"""``elora run``: the stages in order, each resumable from the run directory's artifacts.

Stages so far: prepare (data) → model check. Later stages (featurize, estimate, cluster,
train, boost, combine, evaluate) are appended here as they land.
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


def init_run_dir(cfg: RunConfig, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    write_text(out / "config.yaml", dump_config(cfg))


def run_pipeline(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    init_run_dir(cfg, out)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    manifest = prepare(cfg, out, force=force)
    timings["prepare"] = time.perf_counter() - t

    t = time.perf_counter()
    tasks = read_prepared(out)
    model_info = check_model(cfg, tasks, out)
    timings["model_check"] = time.perf_counter() - t

    report = {
        "stages": list(timings),
        "stage_seconds": {k: round(v, 2) for k, v in timings.items()},
        "wall_s": round(time.perf_counter() - t0, 2),
        "tasks": manifest["tasks"],
        "model": model_info,
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
    return "\n".join(lines)


def load_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())
