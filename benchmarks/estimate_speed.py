"""Estimation speed and planted-group recovery on the embedded suite (issue 3).

Featurizes the embedded suite with MiniLM (about ``--train-per-task`` training samples per
task), then times the estimate stage — k subset regressions as Ray tasks, including putting
the features into the object store and collecting results (Ray start-up is reported
separately) — and clusters the affinity matrix, reporting the adjusted Rand index against
the planted groups.

    python benchmarks/estimate_speed.py                  # n=10, ~1,000 train samples/task, k=200, d=400
    python benchmarks/estimate_speed.py --quick          # tiny-bert, small: a smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RUNS, machine_info, write_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-per-task", type=int, default=1000)
    ap.add_argument("--subsets", type=int, default=200)
    ap.add_argument("--dim", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3, help="times the estimate stage is timed (fresh each time)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--run-dir", type=Path, default=RUNS / "estimate_speed")
    args = ap.parse_args(argv)

    from elora_ray import load_config, run_stages
    from elora_ray.raysession import ensure_ray

    # The suite carves 15% validation + 15% test from samples_per_task.
    per_task = int(round(args.train_per_task / 0.7))
    sets = [f"suite.samples_per_task={per_task}", f"featurize.dim={args.dim}", f"estimate.num_subsets={args.subsets}"]
    if args.quick:
        sets = ["model.name_or_path=tiny-bert", "suite.samples_per_task=80", "featurize.dim=64", "estimate.num_subsets=40"]
        args.repeats = 1
        args.run_dir = args.run_dir.with_name("estimate_speed_quick")
    cfg = load_config(None, sets)
    t = time.perf_counter()
    ensure_ray(cfg.ray)
    ray_start_s = time.perf_counter() - t
    t = time.perf_counter()
    res = run_stages(cfg, args.run_dir, until="featurize")
    featurize_s = time.perf_counter() - t
    feats = res["featurize"]

    from elora_ray.cluster.stage import cluster_stage
    from elora_ray.estimate import estimate

    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        summary = estimate(cfg, args.run_dir, force=True, progress=False)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    groups = cluster_stage(cfg, args.run_dir, force=True, progress=False)
    cluster_s = time.perf_counter() - t
    train_sizes = feats["splits"]["train"]
    data = {
        "benchmark": "estimate_speed",
        "machine": machine_info(),
        "command": " ".join(["estimate_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "tasks": len(train_sizes),
        "train_samples_per_task": {"min": min(train_sizes.values()), "max": max(train_sizes.values()),
                                   "mean": sum(train_sizes.values()) / len(train_sizes)},
        "subsets": summary["num_subsets"],
        "subset_size": summary["subset_size"],
        "dim": feats["dim"],
        "ray_tasks": summary["ray_tasks"],
        "ray_start_s": round(ray_start_s, 2),
        "featurize_s": round(featurize_s, 1),
        "estimate_s": [round(x, 2) for x in times],
        "estimate_s_best": round(min(times), 2),
        "regression_s": summary["solve_seconds"],
        "target_s": 30.0,
        "cluster_s": round(cluster_s, 2),
        "groups": groups["groups"],
        "m": groups["m"],
        "cluster_method": groups["method"],
        "planted_groups": groups.get("planted_groups"),
        "planted_ari": groups.get("planted_ari"),
    }
    md = "\n".join([
        "# Estimation speed and planted-group recovery (embedded suite)",
        "",
        f"{data['tasks']} tasks, {data['train_samples_per_task']['mean']:.0f} training samples per task on average, "
        f"k={data['subsets']} subsets of {data['subset_size']}, d={data['dim']}, {data['ray_tasks']} Ray tasks.",
        "",
        "| measure | value | target |",
        "|---|---:|---:|",
        f"| estimate stage (object store put + {data['ray_tasks']} Ray tasks + affinity), best of {len(times)} | {data['estimate_s_best']} s | < 30 s |",
        f"| estimate stage, all runs | {', '.join(str(x) for x in data['estimate_s'])} s | |",
        f"| of which the Ray tasks' regressions (wall) | {data['regression_s']} s | |",
        f"| Ray start-up (once per process) | {data['ray_start_s']} s | |",
        f"| featurize (MiniLM, train + validation) | {data['featurize_s']} s | |",
        f"| cluster (SDP, m chosen automatically) | {data['cluster_s']} s | |",
        f"| m found / planted | {data['m']} / {len(data['planted_groups'] or [])} | |",
        f"| adjusted Rand index vs planted groups | {data['planted_ari']:.3f} | ≥ 0.8 |",
        "",
        "Groups found: " + "; ".join("{" + ", ".join(g) + "}" for g in data["groups"]),
        "",
        f"Machine: {data['machine']['cpu']} ({data['machine']['cores']} cores), {data['machine']['date']}. "
        f"Command: `python benchmarks/{data['command']}`.",
        "",
    ])
    write_results("estimate_speed" + ("_quick" if args.quick else ""), data, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
