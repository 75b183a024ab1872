"""Helpers shared by the benchmark scripts: machine description and atomic result writers."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path

# ``make bench-quick`` points both elsewhere so a smoke run never touches the committed results.
RESULTS = Path(os.environ.get("ELORA_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
"""Where results (json, md, png) are written."""
RUNS = Path(os.environ.get("ELORA_BENCH_RUNS") or Path(__file__).resolve().parent / "runs")
"""Where benchmark run directories live."""


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """Lay out, write atomically (a temporary file renamed into place) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
    plt.close(fig)


def write_results(name: str, data: dict, markdown: str, results_dir: Path | None = None) -> Path:
    """Write ``<name>.json`` and ``<name>.md`` under benchmarks/results; return the json path."""
    out = Path(results_dir or RESULTS)
    _atomic_write(out / f"{name}.json", json.dumps(data, indent=2, default=str) + "\n")
    _atomic_write(out / f"{name}.md", markdown if markdown.endswith("\n") else markdown + "\n")
    return out / f"{name}.json"


def publish(name: str, data: dict, markdown: str, plot: Path | None = None) -> Path:
    """Append the machine/command line to ``markdown``, write ``<name>.json/.md`` (and copy
    ``plot`` to ``<name>.png``) under the results folder, print the markdown; return the json path."""
    import shutil

    m = data["machine"]
    wall = f" Wall time {data['wall_s']:.0f} s." if "wall_s" in data else ""
    markdown += f"\nMachine: {m['cpu']} ({m['cores']} cores), {m['date']}. Command: `python benchmarks/{data['command']}`.{wall}\n"
    out = write_results(name, data, markdown)
    if plot is not None:
        shutil.copyfile(plot, out.with_suffix(".png"))
    print(markdown)
    return out


def paired_stats(diffs) -> dict:
    """Per-seed differences a − b (seeds share data splits, so pairing removes what they share):
    mean, sample std, 95% t-interval of the mean (None with one seed), seeds where a is ahead."""
    import numpy as np
    from scipy.stats import t as student_t

    d = np.round(np.asarray(diffs, dtype=float), 12)  # equal accuracies: exactly 0
    mean = float(d.mean())
    std = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    half = float(student_t.ppf(0.975, len(d) - 1) * std / np.sqrt(len(d))) if len(d) > 1 else None
    return {"per_seed": d.tolist(), "mean": mean, "std": std,
            "ci95": [mean - half, mean + half] if half is not None else None,
            "a_ahead": int((d > 0).sum()), "seeds": len(d)}


def current_commit() -> str:
    """The checkout's short commit, "+changes" when elora_ray/ has uncommitted edits, "unknown" outside git."""
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "elora_ray"], cwd=repo, capture_output=True,
                               text=True, check=True).stdout.strip()
        return out + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
