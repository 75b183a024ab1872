"""How each ``cluster.select_m`` rule chooses the number of groups, on every stored planted run.

Reads the featurized runs that ``affinity_planted.py`` (real planted suites) and
``affinity_scale.py`` (synthetic families, n = 10 … 500) leave under ``benchmarks/runs/``, computes
the default first-order affinity and its two half-sample estimates from the stored features
(milliseconds), and for each rule — ``eigengap``, ``heldout``, ``density`` and ``auto`` (what a run
with default settings uses) — reports the m chosen and the adjusted Rand index against the truth
(the source / family is the task name before its last ``_``), next to the ARI at the true m.
No model runs here: rerun those two benchmarks first for fresh features.

    python benchmarks/select_m.py

Writes benchmarks/results/select_m.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RESULTS, RUNS, machine_info, write_results  # noqa: E402,I001

#: ``eigengap_raw``: the eigengap without the default local scaling (``cluster.local_scaling``), the ablation.
RULES = ("auto", "eigengap", "eigengap_raw", "heldout", "density")


def collections() -> list[tuple[str, Path]]:
    """(collection name, run dir) of every stored run with complete training features."""
    out = []
    for name, pattern in (("planted", "affinity_planted/*/run"), ("scale s100", "affinity_scale/n*_s100"),
                          ("scale s40", "affinity_scale/n[0-9]*")):
        for run in sorted(RUNS.glob(pattern), key=lambda p: (len(str(p)), str(p))):
            if name == "scale s40" and run.name.endswith("_s100"):
                continue
            if name == "planted" and planted_set(run) is None:  # e.g. the --quick smoke test's tiny random model
                continue
            if (run / "features" / "manifest.json").is_file():
                out.append((name, run))
    return out


def planted_set(run: Path) -> str | None:
    """``design``, ``heldout`` or ``heldout-2`` for a real planted run (see affinity_planted.py); None for other runs."""
    from benchmarks.affinity_planted import HELDOUT2_SUITES, HELDOUT_SUITES, SUITES

    suite = run.parent.name.rsplit("_seed", 1)[0]
    if suite in HELDOUT2_SUITES:
        return "heldout-2"
    return "heldout" if suite in HELDOUT_SUITES else "design" if suite in SUITES else None


def evaluate(collection: str, run: Path) -> dict:
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from elora_ray.cluster.select import cluster_tasks
    from elora_ray.config.algorithm import ClusterConfig
    from elora_ray.estimate.transfer import first_order_transfer, sample_halves
    from elora_ray.featurize.store import read_features
    from elora_ray.layout import RunLayout

    feats = read_features(run, "train")
    names = sorted(feats)
    truth = [t.rsplit("_", 1)[0] for t in names]
    label = run.parent.name if run.name == "run" else run.name
    seed = int(label.rsplit("seed", 1)[1]) if "_seed" in label else 0
    halves = {t: sample_halves(feats[t].sample_ids, seed) for t in names}
    full, half_a, half_b = first_order_transfer({t: (feats[t].grad, feats[t].h0) for t in names}, halves, names)
    independent = not RunLayout(run).heads.is_file()
    row = {"collection": collection if collection != "planted" else f"planted {planted_set(run)}", "run": label,
           "n": len(names), "true_m": len(set(truth)), "probed": not independent}
    scaling = ClusterConfig().local_scaling
    for rule in RULES:
        t0 = time.perf_counter()
        res = cluster_tasks(full, names, seed=seed, halves=(half_a, half_b), select_m=rule.removesuffix("_raw"),
                            halves_independent=independent, local_scaling=None if rule.endswith("_raw") else scaling)
        row[rule] = {"m": res.m, "ari": float(adjusted_rand_score(truth, res.labels)), "seconds": round(time.perf_counter() - t0, 2)}
    at_true = cluster_tasks(full, names, seed=seed, num_groups=len(set(truth)), local_scaling=scaling)
    row["ari_true_m"] = float(adjusted_rand_score(truth, at_true.labels))
    rng = np.random.default_rng(0)
    row["random_groups_ari"] = float(np.mean([adjusted_rand_score(truth, rng.permutation(truth)) for _ in range(100)]))
    return row


def render(rows: list[dict], info: dict, command: str) -> str:
    import numpy as np

    lines = ["# Choosing the number of groups: every `cluster.select_m` rule on the stored planted runs", "",
             f"Command: `{command}`. Machine: {info['cpu']} ({info['cores']} cores), {info['date']}.",
             "First-order affinity (the default) from each run's stored features; m / ARI against the sources "
             "(real planted suites) or families (synthetic scale suites). `auto` is what default settings use "
             "(eigengap for these probed-encoder runs). Every rule but `eigengap_raw` partitions the default "
             "locally scaled affinity (`cluster.local_scaling: 2`; the held-out rule uses the affinity as given); "
             "`eigengap_raw` is the eigengap without it. `planted design`: the suites the eigengap rule, its 2% "
             "floor and the local scaling were chosen on; `planted heldout`: built and run after the m rule was "
             "fixed; `planted heldout-2`: built and run after the local scaling was fixed.", "",
             "| collection | run | n | true m | " + " | ".join(f"{r} m / ARI" for r in RULES) + " | ARI at true m | random groups |",
             "|---|---|---:|---:|" + "---|" * len(RULES) + "---:|---:|"]
    for r in rows:
        cells = " | ".join(f"{r[k]['m']} / {r[k]['ari']:.2f}" for k in RULES)
        lines.append(f"| {r['collection']} | {r['run']} | {r['n']} | {r['true_m']} | {cells} | {r['ari_true_m']:.2f} | "
                     f"{r['random_groups_ari']:.2f} |")
    lines += ["", "Mean ARI (suites with ARI ≥ 0.8):", "", "| collection | runs | " + " | ".join(RULES) + " | at true m |",
              "|---|---:|" + "---:|" * (len(RULES) + 1)]
    groups = sorted({r["collection"] for r in rows}, key=lambda c: [r["collection"] for r in rows].index(c))
    for c in groups + ["all planted"]:
        g = [r for r in rows if r["collection"] == c or (c == "all planted" and r["collection"].startswith("planted"))]
        if not g:
            continue
        cells = " | ".join(f"{np.mean([r[k]['ari'] for r in g]):.2f} ({sum(r[k]['ari'] >= 0.8 for r in g)}/{len(g)})" for k in RULES)
        lines.append(f"| {c} | {len(g)} | {cells} | {np.mean([r['ari_true_m'] for r in g]):.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = sorted({r["collection"] for r in rows}, key=lambda c: [r["collection"] for r in rows].index(c))
    fig, ax = plt.subplots(figsize=(8, 4.0))
    width = 0.8 / (len(RULES) + 1)
    for k, rule in enumerate([*RULES, "true m"]):
        means = [np.mean([r["ari_true_m"] if rule == "true m" else r[rule]["ari"] for r in rows if r["collection"] == g])
                 for g in groups]
        ax.bar(np.arange(len(groups)) + k * width, means, width, label=rule, color="0.6" if rule == "true m" else f"C{k}")
    ax.axhline(0.8, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(groups)) + width * len(RULES) / 2, groups, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean ARI against the truth")
    ax.set_title("m selection rules on stored planted runs (dashed: the 0.8 bar)")
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    rows = []
    for collection, run in collections():
        rows.append(evaluate(collection, run))
        r = rows[-1]
        print(f"{r['collection']:16s} {r['run']:40s} n={r['n']:3d} " + " ".join(f"{k} {r[k]['m']}/{r[k]['ari']:.2f}" for k in RULES),
              flush=True)
    if not rows:
        raise SystemExit("no stored runs under benchmarks/runs/: run benchmarks/affinity_planted.py and affinity_scale.py first")
    info = machine_info()
    command = "python benchmarks/select_m.py"
    write_results("select_m", {"machine": info, "command": command, "rows": rows}, render(rows, info, command))
    plot(rows, RESULTS / "select_m.png")
    print((RESULTS / "select_m.md").read_text())
    print(json.dumps({"rows": len(rows)}))


if __name__ == "__main__":
    main()
