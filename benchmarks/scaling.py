"""Scaling of Algorithm 1's stages: wall time vs number of tasks n, subsets k, dimension d, CPUs.

Synthetic tasks: n tasks drawn from the embedded suite's four rule families (task j has family
j mod 4, its own seed, domain and label noise), written as jsonl files and read like user
data. Each *series* runs in a fresh subprocess with its own local Ray instance (so 1 vs 2 CPUs
really is two Ray instances), goes through prepare → featurize → estimate → cluster into one
run directory, and then reruns estimate + cluster for every further k on the same features.
Ray start-up is timed separately. The planted partition gives an adjusted Rand index per point.

    python benchmarks/scaling.py            # MiniLM; n up to 500, k up to 2,000, d 100..800, 1 vs 2 CPUs
    python benchmarks/scaling.py --quick    # tiny-bert, n = 8, two series: a smoke test (not for timing)

Writes benchmarks/results/scaling[_quick].{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RESULTS, RUNS, machine_info, write_results  # noqa: E402,I001

FULL = {
    "model": "default", "samples_per_task": 40,
    "series": [
        *({"n": n, "d": 400, "cpus": 2, "ks": [200] if n != 50 else [200, 100, 500, 1000, 2000]} for n in (10, 25, 50, 100, 200, 500)),
        *({"n": 50, "d": d, "cpus": 2, "ks": [200]} for d in (100, 200, 800)),
        {"n": 100, "d": 400, "cpus": 1, "ks": [200]},
    ],
}
QUICK = {
    "model": "tiny-bert", "samples_per_task": 20,
    # Two series (each starts its own Ray): k reuse and the CPU comparison, in about a minute.
    "series": [{"n": 8, "d": 32, "cpus": 2, "ks": [20, 40]}, {"n": 8, "d": 32, "cpus": 1, "ks": [20]}],
}


def write_tasks(n: int, samples_per_task: int, root: Path) -> tuple[list[dict], list[list[str]]]:
    """n synthetic tasks as jsonl under ``root`` (reused if present); (task configs, planted groups)."""
    from elora_ray.config import SuiteConfig
    from elora_ray.tasks.suite import FAMILIES, generate_task

    cfg = SuiteConfig(samples_per_task=samples_per_task)
    tasks, groups = [], {f: [] for f in FAMILIES}
    for j in range(n):
        family = FAMILIES[j % len(FAMILIES)]
        name = f"{family}_{j:03d}"
        entry = {"name": name}
        folder = root / name
        if not (folder / "test.jsonl").is_file():
            t = generate_task(name, family, j, cfg)
            folder.mkdir(parents=True, exist_ok=True)
            for split, rows in t.splits.items():
                (folder / f"{split}.jsonl").write_text(
                    "".join(json.dumps({"id": i, "text": ex.text, "label": ex.label}) + "\n" for i, ex in enumerate(rows)))
        for split in ("train", "validation", "test"):
            entry[split] = str(folder / f"{split}.jsonl")
        tasks.append(entry)
        groups[family].append(name)
    return tasks, [g for g in groups.values() if g]


def run_series(spec: dict) -> list[dict]:
    """One series in this process: fresh run dir, own Ray; a row per k."""
    from sklearn.metrics import adjusted_rand_score

    from elora_ray import load_config, run_stages
    from elora_ray.raysession import ensure_ray

    tasks, planted = write_tasks(spec["n"], spec["samples_per_task"], Path(spec["data"]))
    run = Path(spec["run"])
    shutil.rmtree(run, ignore_errors=True)
    base = [f"model.name_or_path={spec['model']}", f"featurize.dim={spec['d']}", f"ray.num_cpus={spec['cpus']}",
            "report_to=none"]
    t = time.perf_counter()
    cfg = load_config(None, base + [f"estimate.num_subsets={spec['ks'][0]}", "tasks=" + json.dumps(tasks)])
    ensure_ray(cfg.ray)
    ray_start = time.perf_counter() - t
    truth = {name: g for g, names in enumerate(planted) for name in names}
    rows = []
    for i, k in enumerate(spec["ks"]):
        cfg = cfg.model_copy(update={"estimate": cfg.estimate.model_copy(update={"num_subsets": k})})
        res = run_stages(cfg, run, until="cluster")
        sec = res["_seconds"]
        # The first estimate of a process also starts Ray workers and imports; time it again warm.
        warm = run_stages(cfg, run, until="estimate", force_last=True)["_seconds"]["estimate"] if i == 0 else sec["estimate"]
        groups = res["cluster"]["groups"]
        found = {name: g for g, names in enumerate(groups) for name in names}
        names = sorted(truth)
        rows.append({
            "n": spec["n"], "k": k, "d": spec["d"], "cpus": spec["cpus"], "first_in_series": i == 0,
            "samples": res["featurize"]["samples"], "ray_start_s": round(ray_start, 2) if i == 0 else None,
            "prepare_s": sec["prepare"] if i == 0 else None, "featurize_s": sec["featurize"] if i == 0 else None,
            "featurize_stream_s": res["featurize"].get("gradient_seconds_this_run") if i == 0 else None,
            "estimate_s": sec["estimate"], "estimate_warm_s": warm, "cluster_s": sec["cluster"], "m": res["cluster"]["m"],
            "cluster_method": res["cluster"]["method"],
            "ari": round(float(adjusted_rand_score([truth[x] for x in names], [found[x] for x in names])), 4),
            "coverage": res["estimate"]["coverage"], "subset_size": res["estimate"]["subset_size"],
        })
    return rows


def render(data: dict) -> str:
    mi = data["machine"]
    rows = data["rows"]
    lines = [
        f"# Scaling of Algorithm 1 ({data['name']})",
        "",
        f"Model `{data['model']}`, {data['samples_per_task']} samples per synthetic task (70% train, 15% validation "
        f"featurized). Machine: {mi['cpu']} ({mi['cores']} cores), GPU: {mi['gpu']}; {mi['date']}; load average at start "
        f"{data['load_at_start']}. Each series is a fresh process with its own Ray instance; k > first reuses the features.",
        "",
        "featurize s: the whole stage (Ray Data start, model load, probe, streaming); stream s: the gradient "
        "streaming alone. estimate s: first call in the process (starts Ray workers); warm: the same again.",
        "",
        "| n tasks | k | d | CPUs | samples | Ray start s | featurize s | stream s | stream samples/s | estimate s | warm s | cluster s (method, m) | ARI vs planted |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]

    def c(v):
        return "" if v is None else v

    for r in rows:
        st = r["featurize_stream_s"]
        lines.append(
            f"| {r['n']} | {r['k']} | {r['d']} | {r['cpus']} | {r['samples']} | {c(r['ray_start_s'])} | "
            f"{c(r['featurize_s'])} | {c(st)} | {'' if not st else round(r['samples'] / st, 1)} | {r['estimate_s']} | "
            f"{r['estimate_warm_s']} | {r['cluster_s']} ({r['cluster_method']}, {r['m']}) | {r['ari']} |")
    lines += ["", "Complexity, in words (fits in the JSON under `fits`):", ""]
    for k, v in data["fits"].items():
        lines.append(f"- {k}: {v}")
    lines += ["", f"Plot: `{data['name']}.png`.", ""]
    return "\n".join(lines)


def _slope(xs: list[float], ys: list[float]) -> float:
    """Exponent of a power law y ∝ x^a fitted in log-log space."""
    import numpy as np

    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def fits(rows: list[dict]) -> dict[str, str]:
    by_n = sorted((r for r in rows if r["first_in_series"] and r["d"] == 400 and r["cpus"] == 2), key=lambda r: r["n"])
    vs_k = sorted((r for r in rows if r["n"] == 50 and r["d"] == 400 and r["cpus"] == 2), key=lambda r: r["k"])
    vs_d = sorted((r for r in rows if r["n"] == 50 and r["first_in_series"] and r["cpus"] == 2), key=lambda r: r["d"])
    out = {}
    if len(by_n) >= 2:
        out["featurize streaming vs samples"] = (f"time ∝ samples^{_slope([r['samples'] for r in by_n], [r['featurize_stream_s'] for r in by_n]):.2f} "
                                                 "(linear expected: one pass per sample)")
        if len(by_n) >= 3:
            top = by_n[-2:]
            out["featurize streaming vs samples, two largest n"] = (
                f"time ∝ samples^{_slope([r['samples'] for r in top], [r['featurize_stream_s'] for r in top]):.2f} "
                "(small n is dominated by per-stage fixed costs: actor start, model load)")
        out["featurize stage vs samples"] = f"time ∝ samples^{_slope([r['samples'] for r in by_n], [r['featurize_s'] for r in by_n]):.2f} (fixed start-up included)"
        out["estimate (warm) vs n, k fixed"] = f"time ∝ n^{_slope([r['n'] for r in by_n], [r['estimate_warm_s'] for r in by_n]):.2f}"
        sdp = [r for r in by_n if r["cluster_method"] == "sdp"]  # not the spectral fallback above max_sdp_tasks
        if len(sdp) >= 2:
            out["cluster (SDP) vs n"] = f"time ∝ n^{_slope([r['n'] for r in sdp], [r['cluster_s'] for r in sdp]):.2f}"
    if len(vs_k) >= 2:
        out["estimate (warm) vs k (n=50)"] = f"time ∝ k^{_slope([r['k'] for r in vs_k], [r['estimate_warm_s'] for r in vs_k]):.2f}"
    if len(vs_d) >= 2:
        out["featurize streaming vs d (n=50)"] = f"time ∝ d^{_slope([r['d'] for r in vs_d], [r['featurize_stream_s'] for r in vs_d]):.2f}"
        out["estimate (warm) vs d (n=50)"] = f"time ∝ d^{_slope([r['d'] for r in vs_d], [r['estimate_warm_s'] for r in vs_d]):.2f}"
    one = [r for r in rows if r["cpus"] == 1 and r["first_in_series"]]
    for r1 in one:
        r2 = next((r for r in rows if r["cpus"] == 2 and r["n"] == r1["n"] and r["d"] == r1["d"] and r["first_in_series"]), None)
        if r2:
            out[f"2 vs 1 CPUs (n={r1['n']})"] = (f"featurize streaming {r1['featurize_stream_s'] / r2['featurize_stream_s']:.2f}× "
                                                 f"as fast, estimate (warm) {r1['estimate_warm_s'] / r2['estimate_warm_s']:.2f}× as fast")
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    by_n = sorted((r for r in rows if r["first_in_series"] and r["d"] == rows[0]["d"] and r["cpus"] == 2), key=lambda r: r["n"])
    ax = axes[0]
    for key, label in (("featurize_s", "featurize stage"), ("featurize_stream_s", "featurize streaming"),
                       ("estimate_warm_s", "estimate (warm)"), ("cluster_s", "cluster")):
        ax.plot([r["n"] for r in by_n], [r[key] for r in by_n], "o-", label=label)
    ax.set(xscale="log", yscale="log", xlabel="tasks n", ylabel="wall s", title="stage time vs n")
    ax.legend()
    n_k = max({r["n"] for r in rows}, key=lambda n: sum(r["n"] == n for r in rows))
    vs_k = sorted((r for r in rows if r["n"] == n_k and r["cpus"] == 2 and r["d"] == rows[0]["d"]), key=lambda r: r["k"])
    axes[1].plot([r["k"] for r in vs_k], [r["estimate_warm_s"] for r in vs_k], "o-")
    axes[1].set(xscale="log", yscale="log", xlabel="subsets k", ylabel="estimate wall s", title=f"estimate vs k (n={n_k})")
    vs_d = sorted((r for r in rows if r["n"] == n_k and r["first_in_series"] and r["cpus"] == 2), key=lambda r: r["d"])
    axes[2].plot([r["d"] for r in vs_d], [r["featurize_stream_s"] for r in vs_d], "o-", label="featurize streaming")
    axes[2].plot([r["d"] for r in vs_d], [r["estimate_warm_s"] for r in vs_d], "o-", label="estimate (warm)")
    axes[2].set(xscale="log", xlabel="projection d", ylabel="wall s", title=f"stage time vs d (n={n_k})")
    axes[2].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--series", help=argparse.SUPPRESS)  # internal: run one series, print JSON rows
    ap.add_argument("--render-only", action="store_true",
                    help="recompute fits, table and plot from the existing results JSON (no measuring)")
    args = ap.parse_args(argv)
    if args.series:
        print("ROWS " + json.dumps(run_series(json.loads(args.series))), flush=True)
        return 0
    if args.render_only:
        name = "scaling_quick" if args.quick else "scaling"
        data = json.loads((RESULTS / f"{name}.json").read_text())
        data["fits"] = fits(data["rows"])
        plot(data["rows"], RESULTS / f"{name}.png")
        write_results(name, data, render(data))
        print(render(data))
        return 0
    plan = QUICK if args.quick else FULL
    name = "scaling_quick" if args.quick else "scaling"
    work = RUNS / name
    load = [round(x, 2) for x in os.getloadavg()]
    rows: list[dict] = []
    for i, s in enumerate(plan["series"]):
        spec = {**s, "model": plan["model"], "samples_per_task": plan["samples_per_task"],
                "data": str(work / "data" / f"spt{plan['samples_per_task']}"), "run": str(work / f"series-{i}")}
        print(f"[{i + 1}/{len(plan['series'])}] n={s['n']} d={s['d']} cpus={s['cpus']} k={s['ks']}", flush=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("RAY_ADDRESS", None)
        r = subprocess.run([sys.executable, __file__, "--series", json.dumps(spec)], env=env, capture_output=True, text=True)
        found = [ln for ln in r.stdout.splitlines() if ln.startswith("ROWS ")]
        if r.returncode != 0 or not found:
            sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
            raise SystemExit(f"series {spec} failed (exit {r.returncode})")
        rows.extend(json.loads(found[-1][5:]))
        print(f"    {rows[-1]}", flush=True)
    data = {"name": name, "model": plan["model"], "samples_per_task": plan["samples_per_task"], "machine": machine_info(),
            "load_at_start": load, "command": "python benchmarks/scaling.py" + (" --quick" if args.quick else ""),
            "rows": rows}
    data["fits"] = fits(rows)
    plot(rows, RESULTS / f"{name}.png")
    write_results(name, data, render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
