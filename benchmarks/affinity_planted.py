"""Does the affinity group parts of one real dataset together? Planted suites from ../shared/data.

Each suite cuts real GLUE/SuperGLUE sources into disjoint parts (``elora_ray.tasks.planted``,
300 train / 100 validation / 150 test rows per part, seeded): the sources are the truth. For
every suite and seed: prepare + featurize once (MiniLM, default settings), then estimate +
cluster with each affinity kind at default settings, m chosen automatically; reports the
adjusted Rand index against the sources with the chosen m and with m fixed to the true number
of sources, next to the trivial baseline (random groups of the true sizes, mean over 200 draws).

    python benchmarks/affinity_planted.py                 # 3 constructions x 2 seeds
    python benchmarks/affinity_planted.py --quick         # one small suite, tiny model (smoke test)

Writes benchmarks/results/affinity_planted[_quick].{json,md}. Part files and runs live under
benchmarks/runs/ (never committed: the data is not ours).
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

SUITES = {
    "sst2x3_cola2_mrpc2": {"glue/sst2": 3, "glue/cola": 2, "glue/mrpc": 2},
    "qnli2_boolq2_sst2x2_cola2": {"glue/qnli": 2, "superglue/boolq": 2, "glue/sst2": 2, "glue/cola": 2},
    "mrpc3_qnli3_multirc3": {"glue/mrpc": 3, "glue/qnli": 3, "superglue/multirc": 3},
}
KINDS = ("first_order", "transfer", "paper")


def run_suite(name: str, sources: dict, seed: int, data_root: Path, sets: list[str], sizes) -> list[dict]:
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from elora_ray import load_config, run_stages
    from elora_ray.tasks.planted import write_planted_suite

    root = RUNS / "affinity_planted" / f"{name}_seed{seed}"
    tasks, truth = write_planted_suite(sources, root / "data", data_root, sizes=sizes, seed=seed)
    names = sorted(truth)
    y = [truth[t] for t in names]
    rng = np.random.default_rng(seed)
    random_ari = float(np.mean([adjusted_rand_score(y, rng.permutation(y)) for _ in range(200)]))
    rows = []
    for kind in KINDS:
        cfg = load_config(None, sets + [f"seed={seed}", "tasks=" + json.dumps(tasks), f"estimate.affinity={kind}"])
        run = root / "run"
        t0 = time.perf_counter()
        res = run_stages(cfg, run, until="cluster")
        secs = res["_seconds"]
        lab = {t: i for i, g in enumerate(res["cluster"]["groups"]) for t in g}
        fixed = load_config(None, sets + [f"seed={seed}", "tasks=" + json.dumps(tasks), f"estimate.affinity={kind}",
                                          f"cluster.num_groups={len(set(y))}"])
        res_m = run_stages(fixed, run, until="cluster")
        lab_m = {t: i for i, g in enumerate(res_m["cluster"]["groups"]) for t in g}
        rows.append({
            "suite": name, "seed": seed, "tasks": len(names), "sources": len(set(y)), "affinity": kind,
            "m_chosen": res["cluster"]["m"],
            "ari_chosen_m": float(adjusted_rand_score(y, [lab[t] for t in names])),
            "ari_true_m": float(adjusted_rand_score(y, [lab_m[t] for t in names])),
            "random_groups_ari": random_ari,
            "featurize_s": secs.get("featurize"), "estimate_s": secs.get("estimate"), "cluster_s": secs.get("cluster"),
            "wall_s": round(time.perf_counter() - t0, 1),
            "groups": res["cluster"]["groups"],
            "candidates": [{k: c.get(k) for k in ("m", "heldout_error", "heldout_se", "score")} for c in res["cluster"]["candidates"]],
        })
        print(f"{name} seed {seed} {kind}: m={rows[-1]['m_chosen']} ARI {rows[-1]['ari_chosen_m']:.2f} "
              f"(at true m {rows[-1]['ari_true_m']:.2f}; random {random_ari:.2f})", flush=True)
    return rows


def render(rows: list[dict], info: dict, command: str) -> str:
    import pandas as pd

    t = pd.DataFrame(rows)
    lines = ["# Affinity on real planted suites (parts of one dataset should group together)", "",
             f"Command: `{command}`. Machine: {info['cpu']} ({info['cores']} cores), {info['date']}.",
             "Each task is a disjoint 300/100/150 part of a real source; ARI against the sources.", "",
             "| suite | seed | n | sources | affinity | m chosen | ARI (chosen m) | ARI (true m) | random groups ARI | estimate s |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['suite']} | {r['seed']} | {r['tasks']} | {r['sources']} | {r['affinity']} | {r['m_chosen']} | "
                     f"{r['ari_chosen_m']:.2f} | {r['ari_true_m']:.2f} | {r['random_groups_ari']:.2f} | {r['estimate_s']} |")
    lines += ["", "Mean ± std over suites and seeds:", "", "| affinity | ARI (chosen m) | ARI (true m) | suites with ARI ≥ 0.8 |",
              "|---|---:|---:|---:|"]
    for kind, g in t.groupby("affinity", sort=False):
        lines.append(f"| {kind} | {g['ari_chosen_m'].mean():.2f} ± {g['ari_chosen_m'].std(ddof=0):.2f} | "
                     f"{g['ari_true_m'].mean():.2f} ± {g['ari_true_m'].std(ddof=0):.2f} | {(g['ari_chosen_m'] >= 0.8).sum()}/{len(g)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one small suite, tiny-bert, small parts (smoke test)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--suites", default=",".join(SUITES))
    ap.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from elora_ray.tasks.planted import PartSizes

    if args.quick:
        sets, sizes, seeds = ["model.name_or_path=tiny-bert", "featurize.dim=32"], PartSizes(60, 30, 10), [0]
        suites = {"quick": {"glue/sst2": 2, "glue/cola": 2}}
    else:
        sets, sizes, seeds = [], PartSizes(), [int(s) for s in args.seeds.split(",")]
        suites = {k: SUITES[k] for k in args.suites.split(",")}
    rows = []
    for name, sources in suites.items():
        for seed in seeds:
            rows += run_suite(name, sources, seed, Path(args.data_root), sets, sizes)
    info = machine_info()
    command = "python benchmarks/affinity_planted.py" + (" --quick" if args.quick else f" --seeds {args.seeds} --suites {args.suites}")
    name = "affinity_planted" + ("_quick" if args.quick else "")
    write_results(name, {"machine": info, "command": command, "rows": rows}, render(rows, info, command))
    print((RESULTS / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
