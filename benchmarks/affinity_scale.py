"""Grouping quality and cost at 10 → 500 tasks, default settings (planted synthetic families).

n tasks drawn from the embedded suite's four rule families (task j has family j mod 4, its own
seed, domain and label noise; the same generator as ``scaling.py``), featurized once per n with
MiniLM, then estimate + cluster at *default* settings for each affinity kind: m is chosen
automatically and compared with the planted families (ARI), next to the ARI at the true m = 4
and the random-groups baseline. Times each stage; fits the exponent of estimate time vs n.

    python benchmarks/affinity_scale.py                    # n = 10, 25, 50, 100, 200, 500; 100 samples per task
    python benchmarks/affinity_scale.py --per-task 40      # the scaling benchmark's 40 samples per task
    python benchmarks/affinity_scale.py --quick            # tiny-bert, n = 6, 10 (smoke test)

Writes benchmarks/results/affinity_scale_s<per-task>.{json,md} (``_quick`` for the smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RESULTS, RUNS, machine_info, write_results  # noqa: E402,I001
from benchmarks.scaling import write_tasks  # noqa: E402


def fit_exponent(xs: list[float], ys: list[float]) -> float | None:
    import numpy as np

    pts = [(x, y) for x, y in zip(xs, ys) if x and y and y > 0]
    if len(pts) < 2:
        return None
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


def run_n(n: int, per_task: int, sets: list[str], kinds: list[str]) -> list[dict]:
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from elora_ray import load_config, run_stages

    tasks, planted = write_tasks(n, per_task, RUNS / "affinity_scale" / f"data_{per_task}")
    truth = {name: g for g, names in enumerate(planted) for name in names}
    names = sorted(truth)
    y = [truth[t] for t in names]
    rng = np.random.default_rng(0)
    random_ari = float(np.mean([adjusted_rand_score(y, rng.permutation(y)) for _ in range(100)]))
    run = RUNS / "affinity_scale" / f"n{n}_s{per_task}"
    rows = []
    for kind in kinds:
        base = sets + ["tasks=" + json.dumps(tasks), f"estimate.affinity={kind}", "report_to=none"]
        res = run_stages(load_config(None, base), run, until="cluster")
        sec = res["_seconds"]
        warm = run_stages(load_config(None, base), run, until="estimate", force_last=True)["_seconds"]["estimate"]
        lab = {t: i for i, g in enumerate(res["cluster"]["groups"]) for t in g}
        res_m = run_stages(load_config(None, base + [f"cluster.num_groups={len(planted)}"]), run, until="cluster")
        lab_m = {t: i for i, g in enumerate(res_m["cluster"]["groups"]) for t in g}
        est = res["estimate"]
        rows.append({
            "n": n, "affinity": kind, "samples": res["featurize"]["samples"], "featurize_s": sec["featurize"],
            "estimate_s": sec["estimate"], "estimate_warm_s": warm, "cluster_s": sec["cluster"],
            "cluster_method": res["cluster"]["method"], "m_chosen": res["cluster"]["m"], "select_m": res["cluster"].get("select_m"),
            "ari_chosen_m": float(adjusted_rand_score(y, [lab[t] for t in names])),
            "ari_true_m": float(adjusted_rand_score(y, [lab_m[t] for t in names])), "random_groups_ari": random_ari,
            "num_subsets": est["num_subsets"], "subset_size": est["subset_size"],
            "appearances_per_task": est.get("appearances_per_task", {}).get("mean"),
            "cooccurrences_per_pair": est.get("cooccurrences_per_pair", {}).get("mean"),
        })
        r = rows[-1]
        print(f"n={n} {kind}: m={r['m_chosen']} ARI {r['ari_chosen_m']:.2f} (true m {r['ari_true_m']:.2f}); featurize "
              f"{r['featurize_s']} s, estimate {r['estimate_s']} s (warm {warm} s), cluster {r['cluster_s']} s", flush=True)
    return rows


def render(data: dict) -> str:
    mi = data["machine"]
    lines = ["# Grouping at scale: planted synthetic families, default settings", "",
             f"Command: `{data['command']}`. Model `{data['model']}`, {data['per_task']} samples per task, 4 families. "
             f"Machine: {mi['cpu']} ({mi['cores']} cores); {mi['date']}.", "",
             "featurize s is the stage once per n (shared by both affinity kinds: 0 on the second row); estimate warm s reruns it with "
             "Ray already up. ARI is against the planted families; random groups ≈ 0.", "",
             "| n | affinity | samples | featurize s | estimate s | warm s | cluster s (method) | k × size | appearances / co-occurrences | m chosen | ARI (chosen m) | ARI (m = 4) |",
             "|---:|---|---:|---:|---:|---:|---|---|---|---:|---:|---:|"]
    for r in data["rows"]:
        design = "–" if not r["num_subsets"] else f"{r['num_subsets']} × {r['subset_size']}"
        cover = "–" if r["appearances_per_task"] is None else f"{r['appearances_per_task']:.0f} / {r['cooccurrences_per_pair']:.2f}"
        lines.append(f"| {r['n']} | {r['affinity']} | {r['samples']} | {r['featurize_s']} | {r['estimate_s']} | {r['estimate_warm_s']} | "
                     f"{r['cluster_s']} ({r['cluster_method']}) | {design} | {cover} | {r['m_chosen']} | {r['ari_chosen_m']:.2f} | {r['ari_true_m']:.2f} |")
    lines += ["", "Fitted exponents (time ∝ n^e, warm estimate):", ""]
    lines += [f"- {k}: {v:.2f}" if v is not None else f"- {k}: n/a" for k, v in data["exponents"].items()]
    top = max(x["n"] for x in data["rows"])
    featurize_top = max(r["featurize_s"] for r in data["rows"] if r["n"] == top)  # measured once per n, shared
    for r in [r for r in data["rows"] if r["n"] == top]:
        total = featurize_top + r["estimate_s"] + r["cluster_s"]
        lines.append(f"- n = {r['n']}, {r['affinity']}: featurize + estimate + cluster = {total:.0f} s ({total / 60:.1f} min)")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ns", default="10,25,50,100,200,500")
    ap.add_argument("--kinds", default="first_order,transfer")
    ap.add_argument("--per-task", type=int, default=100, help="samples per synthetic task (70%% train)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.quick:
        model, per_task, ns, sets = "tiny-bert", 20, [6, 10], ["model.name_or_path=tiny-bert", "featurize.dim=32"]
    else:
        model, per_task, ns, sets = "default", args.per_task, [int(x) for x in args.ns.split(",")], []
    kinds = args.kinds.split(",")
    t0 = time.perf_counter()
    rows = [r for n in ns for r in run_n(n, per_task, sets, kinds)]
    exps = {}
    for kind in kinds:
        sub = [r for r in rows if r["affinity"] == kind]
        exps[f"estimate ({kind}) vs n"] = fit_exponent([r["n"] for r in sub], [r["estimate_warm_s"] for r in sub])
        big = [r for r in sub if r["n"] >= 100]
        exps[f"estimate ({kind}) vs n, n ≥ 100"] = fit_exponent([r["n"] for r in big], [r["estimate_warm_s"] for r in big])
    exps["featurize vs n"] = fit_exponent([r["n"] for r in rows if r["affinity"] == kinds[0]],
                                          [r["featurize_s"] for r in rows if r["affinity"] == kinds[0]])
    command = "python benchmarks/affinity_scale.py" + (" --quick" if args.quick else f" --ns {args.ns} --kinds {args.kinds} --per-task {per_task}")
    data = {"machine": machine_info(), "command": command, "model": model, "per_task": per_task, "rows": rows,
            "exponents": exps, "wall_s": round(time.perf_counter() - t0, 1)}
    name = "affinity_scale" + ("_quick" if args.quick else f"_s{per_task}")
    write_results(name, data, render(data))
    print((RESULTS / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
