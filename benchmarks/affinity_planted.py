"""Does the affinity group parts of one real dataset together? Planted suites from ../shared/data.

Each suite cuts real GLUE/SuperGLUE sources into disjoint parts (``elora_ray.tasks.planted``,
300 train / 100 validation / 150 test rows per part, seeded): the sources are the truth. For
every suite and seed: prepare + featurize once (MiniLM, default settings), then estimate +
cluster with each affinity kind at default settings, m chosen automatically; reports the
adjusted Rand index against the sources with the chosen m and with m fixed to the true number
of sources, next to the trivial baseline (random groups of the true sizes, mean over 200 draws).
For the kinds with half-sample estimates it also reports the m and ARI of each ``cluster.select_m``
rule (eigengap with and without the default local scaling, heldout) on the same affinity.

Three sets of suites: ``design`` (3 constructions x 3 seeds: the m rules and the local scaling were
chosen on these), ``heldout`` (7 other constructions, sources, part sizes and seeds, first run after
the m rules were fixed) and ``heldout-2`` (6 more, written and first run after the local scaling was
fixed): the honest estimate of how the defaults do on suites nobody tuned them on.

    python benchmarks/affinity_planted.py                 # all three sets
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

import numpy as np  # noqa: E402

SUITES = {
    "sst2x3_cola2_mrpc2": {"glue/sst2": 3, "glue/cola": 2, "glue/mrpc": 2},
    "qnli2_boolq2_sst2x2_cola2": {"glue/qnli": 2, "superglue/boolq": 2, "glue/sst2": 2, "glue/cola": 2},
    "mrpc3_qnli3_multirc3": {"glue/mrpc": 3, "glue/qnli": 3, "superglue/multirc": 3},
}
#: Held-out constructions: (sources, seed, part sizes train/validation/test).
HELDOUT_SUITES = {
    "cola2_boolq2_sst2x2_multirc2": ({"glue/cola": 2, "superglue/boolq": 2, "glue/sst2": 2, "superglue/multirc": 2}, 3, (300, 100, 150)),
    "sst2x4_qnli4": ({"glue/sst2": 4, "glue/qnli": 4}, 4, (300, 100, 150)),
    "mrpc2_qnli2_multirc2_cola2_sst2x2": ({"glue/mrpc": 2, "glue/qnli": 2, "superglue/multirc": 2, "glue/cola": 2, "glue/sst2": 2}, 5, (300, 100, 150)),
    "qnli3_sst2x3_cola3_boolq3": ({"glue/qnli": 3, "glue/sst2": 3, "glue/cola": 3, "superglue/boolq": 3}, 6, (200, 80, 100)),
    "sst2x3_mrpc3_boolq3_small": ({"glue/sst2": 3, "glue/mrpc": 3, "superglue/boolq": 3}, 7, (150, 50, 100)),
    "sst2x5_cola2_wnli1": ({"glue/sst2": 5, "glue/cola": 2, "glue/wnli": 1}, 8, (300, 100, 150)),
    "cola3_multirc3_big": ({"glue/cola": 3, "superglue/multirc": 3}, 9, (500, 100, 100)),
}
#: Second held-out set: constructions written and run only after the local scaling of the affinity
#: (``cluster.local_scaling``) and its k were fixed on the design suites (2026-11-30).
HELDOUT2_SUITES = {
    "boolq2_mrpc2_cola2_qnli2": ({"superglue/boolq": 2, "glue/mrpc": 2, "glue/cola": 2, "glue/qnli": 2}, 10, (300, 100, 150)),
    "multirc3_boolq3_qnli3": ({"superglue/multirc": 3, "superglue/boolq": 3, "glue/qnli": 3}, 11, (250, 80, 100)),
    "cola4_sst2x4": ({"glue/cola": 4, "glue/sst2": 4}, 12, (200, 80, 100)),
    "mrpc2_cola2_sst2x2_wnli2": ({"glue/mrpc": 2, "glue/cola": 2, "glue/sst2": 2, "glue/wnli": 2}, 13, (150, 50, 60)),
    "qnli4_multirc2_sst2x2_cola2_mrpc2": ({"glue/qnli": 4, "superglue/multirc": 2, "glue/sst2": 2, "glue/cola": 2,
                                           "glue/mrpc": 2}, 14, (300, 100, 150)),
    "rte2_sst2x3_boolq2": ({"superglue/rte": 2, "glue/sst2": 3, "superglue/boolq": 2}, 15, (80, 25, 25)),
}
KINDS = ("first_order", "transfer", "paper")
#: Rule columns: each ``cluster.select_m`` rule on the run's affinity; ``eigengap`` with the default local
#: scaling (what ``auto`` uses for this probed encoder), ``eigengap_raw`` without it (the ablation).
RULES = ("eigengap", "eigengap_raw", "heldout")


def rule_results(run: Path, y: list, names: list[str], seed: int, kind: str) -> dict:
    """m and ARI of every select_m rule on the run's affinity (and its halves); {} without halves."""
    from sklearn.metrics import adjusted_rand_score

    from elora_ray.artifacts import read_affinity, read_affinity_halves
    from elora_ray.cluster.kernel import scaling_for
    from elora_ray.cluster.select import cluster_tasks
    from elora_ray.config.algorithm import ClusterConfig

    got, A = read_affinity(run)
    halves = read_affinity_halves(run)
    if halves is None:
        return {}
    order = [got.index(t) for t in names]
    A = A[np.ix_(order, order)]
    halves = tuple(h[np.ix_(order, order)] for h in halves)
    out = {}
    scaling = scaling_for(kind, ClusterConfig().local_scaling)
    for rule in RULES:
        res = cluster_tasks(A, names, seed=seed, halves=halves, select_m=rule.removesuffix("_raw"),
                            local_scaling=None if rule.endswith("_raw") else scaling)
        out[rule] = {"m": res.m, "ari": float(adjusted_rand_score(y, res.labels))}
    return out


def run_suite(name: str, sources: dict, seed: int, data_root: Path, sets: list[str], sizes, suite_set: str = "design",
              runs: Path | None = None) -> list[dict]:
    from sklearn.metrics import adjusted_rand_score

    from elora_ray import load_config, run_stages
    from elora_ray.tasks.planted import write_planted_suite

    root = (runs or RUNS / "affinity_planted") / f"{name}_seed{seed}"
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
            "set": suite_set, "suite": name, "seed": seed, "tasks": len(names), "sources": len(set(y)), "affinity": kind,
            "select_m": res["cluster"].get("select_m"), "rules": rule_results(run, y, names, seed, kind),
            "local_scaling": res["cluster"].get("local_scaling"),
            "m_chosen": res["cluster"]["m"],
            "ari_chosen_m": float(adjusted_rand_score(y, [lab[t] for t in names])),
            "ari_true_m": float(adjusted_rand_score(y, [lab_m[t] for t in names])),
            "random_groups_ari": random_ari,
            "featurize_s": secs.get("featurize"), "estimate_s": secs.get("estimate"), "cluster_s": secs.get("cluster"),
            "wall_s": round(time.perf_counter() - t0, 1),
            "groups": res["cluster"]["groups"],
            "candidates": [{k: c.get(k) for k in ("m", "heldout_error", "heldout_se", "eigenvalue", "gap_ratio", "score")}
                           for c in res["cluster"]["candidates"]],
        })
        print(f"{name} seed {seed} {kind}: m={rows[-1]['m_chosen']} ARI {rows[-1]['ari_chosen_m']:.2f} "
              f"(at true m {rows[-1]['ari_true_m']:.2f}; random {random_ari:.2f})", flush=True)
    return rows


def _rule(r: dict, rule: str) -> str:
    x = r.get("rules", {}).get(rule)
    return f"{x['m']} / {x['ari']:.2f}" if x else "–"


def render(rows: list[dict], info: dict, command: str, overrides: list[str] = ()) -> str:
    import pandas as pd

    t = pd.DataFrame(rows)
    lines = ["# Affinity on real planted suites (parts of one dataset should group together)", "",
             f"Command: `{command}`. Machine: {info['cpu']} ({info['cores']} cores), {info['date']}.",
             "Each task is a disjoint part of a real source (300/100/150 train/validation/test rows unless the suite "
             "says otherwise); ARI against the sources. Default settings (model MiniLM; tiny-bert with --quick)"
             + (f" except {', '.join(f'`{o}`' for o in overrides)}" if overrides else "") + "; "
             "`m chosen` is `cluster.select_m: auto` (for this probed encoder: the eigengap) on the affinity after "
             "the default local scaling (`cluster.local_scaling: 2`; not for `paper`). The last three columns give "
             "m / ARI of each rule on the same affinity; `eigengap raw` is the eigengap without local scaling (the "
             "rule before 2026-11-30). `design` suites are the ones the m rules and the local scaling were chosen "
             "on; `heldout` suites were built and run only after the m rules were fixed; `heldout-2` suites were "
             "built and run only after the local scaling was fixed.", "",
             "| set | suite | seed | n | sources | affinity | m chosen | ARI (chosen m) | ARI (true m) | random groups ARI "
             "| eigengap m / ARI | eigengap raw m / ARI | heldout m / ARI | estimate s |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|---|---|---:|"]
    for r in rows:
        lines.append(f"| {r.get('set', 'design')} | {r['suite']} | {r['seed']} | {r['tasks']} | {r['sources']} | {r['affinity']} | "
                     f"{r['m_chosen']} | {r['ari_chosen_m']:.2f} | {r['ari_true_m']:.2f} | {r['random_groups_ari']:.2f} | "
                     f"{_rule(r, 'eigengap')} | {_rule(r, 'eigengap_raw')} | {_rule(r, 'heldout')} | {r['estimate_s']} |")
    lines += ["", "Mean ± std over suites and seeds (ARI ≥ 0.8 counts suites):", "",
              "| set | affinity | ARI (chosen m) | ARI (true m) | ARI ≥ 0.8 | eigengap ARI | eigengap raw ARI | heldout ARI |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    if "set" not in t:
        t["set"] = "design"
    for (group, kind), g in list(t.groupby(["set", "affinity"], sort=False)) + [(("all", k), g) for k, g in t.groupby("affinity", sort=False)]:
        rule_mean = {}
        for rule in RULES:
            v = [r[rule]["ari"] for r in g.get("rules", pd.Series([{}] * len(g))) if isinstance(r, dict) and rule in r]
            rule_mean[rule] = f"{np.mean(v):.2f} ± {np.std(v):.2f}" if v else "–"
        lines.append(f"| {group} | {kind} | {g['ari_chosen_m'].mean():.2f} ± {g['ari_chosen_m'].std(ddof=0):.2f} | "
                     f"{g['ari_true_m'].mean():.2f} ± {g['ari_true_m'].std(ddof=0):.2f} | {(g['ari_chosen_m'] >= 0.8).sum()}/{len(g)} | "
                     f"{rule_mean['eigengap']} | {rule_mean['eigengap_raw']} | {rule_mean['heldout']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one small suite, tiny-bert, small parts (smoke test)")
    ap.add_argument("--seeds", default="0,1,2", help="seeds of the design suites")
    ap.add_argument("--suites", default=",".join(SUITES), help="design suites to run ('' for none)")
    ap.add_argument("--heldout", default=",".join(HELDOUT_SUITES), help="held-out suites to run ('' for none)")
    ap.add_argument("--heldout2", default=",".join(HELDOUT2_SUITES), help="second held-out set to run ('' for none)")
    ap.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="a config override applied to every suite (e.g. featurize.gradient=full_rank); needs --name")
    ap.add_argument("--name", default="", help="suffix of the result and run folder names (affinity_planted_<name>)")
    args = ap.parse_args()
    if args.overrides and not args.name:
        ap.error("--set changes the defaults: give the result a --name so it does not replace the default one")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from elora_ray.tasks.planted import PartSizes

    heldout: dict = {}
    heldout2: dict = {}
    if args.quick:
        sets, sizes, seeds = ["model.name_or_path=tiny-bert", "featurize.dim=32"], PartSizes(60, 30, 10), [0]
        suites = {"quick": {"glue/sst2": 2, "glue/cola": 2}}
    else:
        sets, sizes, seeds = list(args.overrides), PartSizes(), [int(s) for s in args.seeds.split(",")]
        suites = {k: SUITES[k] for k in args.suites.split(",") if k}
        heldout = {k: HELDOUT_SUITES[k] for k in args.heldout.split(",") if k}
        heldout2 = {k: HELDOUT2_SUITES[k] for k in args.heldout2.split(",") if k}
    # Cut every suite's parts before any model work, so a source too small for its parts stops the run at once.
    from elora_ray.tasks.planted import write_planted_suite

    plan = [(name, sources, seed, sizes, "design") for name, sources in suites.items() for seed in seeds]
    plan += [(name, sources, seed, PartSizes(*part), "heldout") for name, (sources, seed, part) in heldout.items()]
    plan += [(name, sources, seed, PartSizes(*part), "heldout-2") for name, (sources, seed, part) in heldout2.items()]
    suffix = "".join(f"_{x}" for x in (args.name, "quick" if args.quick else "") if x)
    runs = RUNS / f"affinity_planted{'_' + args.name if args.name else ''}"
    for name, sources, seed, part, _ in plan:
        write_planted_suite(sources, runs / f"{name}_seed{seed}" / "data", Path(args.data_root), sizes=part, seed=seed)
    rows = []
    for name, sources in suites.items():
        for seed in seeds:
            rows += run_suite(name, sources, seed, Path(args.data_root), sets, sizes, runs=runs)
    for name, (sources, seed, part) in heldout.items():
        rows += run_suite(name, sources, seed, Path(args.data_root), sets, PartSizes(*part), suite_set="heldout", runs=runs)
    for name, (sources, seed, part) in heldout2.items():
        rows += run_suite(name, sources, seed, Path(args.data_root), sets, PartSizes(*part), suite_set="heldout-2", runs=runs)
    info = machine_info()
    command = "python benchmarks/affinity_planted.py" + (" --quick" if args.quick else "") + \
        "".join(f" --set {o}" for o in args.overrides) + (f" --name {args.name}" if args.name else "")
    name = "affinity_planted" + suffix
    write_results(name, {"machine": info, "command": command, "rows": rows}, render(rows, info, command, args.overrides))
    print((RESULTS / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
