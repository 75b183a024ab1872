"""Do the two halves of one task group together? The first-order affinity on a run's stored features, and
variants of it, with no model runs (issue 38, item 4: a grouping lever for decoders, measured before building).

Each task's training samples (their projected gradients and θ* gold log-odds, ``features/train``) are split into
two seeded halves, giving 2n pseudo-tasks whose true grouping is known (the halves of one task belong together).
For each variant of the mean loss-gradient G_t behind ``estimate.affinity: first_order`` (Ã = the normalised
⟨G_i, n_j G_j⟩, as :func:`elora_ray.estimate.transfer.first_order_transfer`):

* ``plain``: G_t = −mean_s σ(−h_s) g_s — what the pipeline uses;
* ``class_balanced``: the mean over labels of each label's mean, so a task's label balance does not weigh in;
* ``calibrated``: h_s shifted by a per-task bias fitted on the task's samples (a binary logistic intercept: θ*'s
  label prior corrected) before the residual weights σ(−h) — the residuals then carry what the prior does not.

the pseudo-tasks are clustered (``cluster_tasks``, m auto and m = n) and scored by the adjusted Rand index against
their tasks. Binary tasks only for ``calibrated`` (others keep their h). The test means something only where the
tasks are distinct datasets (as in the decoder mix): on a planted suite the parts of one source are the same
distribution, so their halves need not group by part (``affinity_planted.py`` scores those against the sources).

    python benchmarks/affinity_halves.py --run benchmarks/runs/ensemble_decoder_glue_smollm2/seed0
    python benchmarks/affinity_halves.py --quick        # featurises tiny-llama on 4 embedded tasks first (not a result)

Writes ``benchmarks/results/affinity_halves[_quick].{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RUNS, machine_info, write_results  # noqa: E402,I001

VARIANTS = ("plain", "class_balanced", "calibrated")


def calibrate(h0: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gold log-odds with the binary intercept c that minimises the task's log loss: h + c for label 1, h − c for 0."""
    from scipy.optimize import minimize_scalar

    s = np.where(y == 1, 1.0, -1.0)
    c = minimize_scalar(lambda c: np.logaddexp(0.0, -(h0 + s * c)).mean(), bounds=(-30, 30), method="bounded").x
    return h0 + s * c


def mean_gradient(variant: str, g: np.ndarray, h0: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    h = calibrate(h0, y) if variant == "calibrated" and set(np.unique(y)) <= {0, 1} else h0
    w = expit(-h)[:, None] * g
    if variant == "class_balanced":
        return -np.mean([w[y == k].mean(0) for k in np.unique(y)], axis=0)
    return -w.mean(0)


def measure(run: Path, seed: int = 0) -> dict:
    from sklearn.metrics import adjusted_rand_score

    from elora_ray.cluster.select import cluster_tasks
    from elora_ray.estimate.transfer import normalise_transfer
    from elora_ray.featurize.store import read_features

    feats = read_features(run, "train")
    rng = np.random.default_rng(seed)
    parts, source = {}, []
    for t in sorted(feats):
        f = feats[t]
        g, h0, y = np.asarray(f.grad, np.float64), np.asarray(f.h0, np.float64), np.asarray(f.label_ids)
        idx = rng.permutation(len(h0))
        for k, sel in enumerate(np.array_split(idx, 2)):
            parts[f"{t}/{k}"] = (g[sel], h0[sel], y[sel])
            source.append(t)
    names = list(parts)
    counts = np.array([len(p[1]) for p in parts.values()], np.float64)
    out = {"run": str(run), "tasks": sorted(feats), "variants": {}}
    for variant in VARIANTS:
        G = np.stack([mean_gradient(variant, *parts[n]) for n in names])
        A = normalise_transfer(G @ (counts[:, None] * G).T)
        same = np.array([[source[i] == source[j] for j in range(len(names))] for i in range(len(names))])
        off = ~np.eye(len(names), dtype=bool)
        row = {"halves_affinity": float(A[same & off].mean()), "other_affinity": float(A[~same].mean())}
        for m in ("auto", len(feats)):
            res = cluster_tasks(A, names, num_groups=m)
            row[f"m_{m if m == 'auto' else 'n'}"] = {"m": res.m, "ari": float(adjusted_rand_score(source, res.labels)),
                                                     "groups": res.groups}
        out["variants"][variant] = row
    return out


def render(data: dict) -> str:
    lines = ["# Do a task's two halves group together? First-order affinity variants on stored features"
             + (" (quick: not a result)" if data["quick"] else ""), "",
             "Each task's training samples split into two seeded halves (2n pseudo-tasks); ARI of the clustering "
             "against the tasks (1.0: every task's halves together, apart from the rest).", "",
             "| run | variant | mean affinity, halves of one task | mean affinity, other pairs | m auto → m (ARI) | m = n (ARI) |",
             "|---|---|---:|---:|---|---:|"]
    for r in data["runs"]:
        for v, row in r["variants"].items():
            lines.append(f"| `{Path(r['run']).name}` ({', '.join(r['tasks'])}) | {v} | {row['halves_affinity']:.2f} | "
                         f"{row['other_affinity']:.2f} | {row['m_auto']['m']} ({row['m_auto']['ari']:.2f}) | {row['m_n']['ari']:.2f} |")
    m = data["machine"]
    lines += ["", f"Machine: {m['cpu']} ({m['cores']} cores), {m['date']}. Command: `python benchmarks/{data['command']}`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, action="append", default=[], help="a run folder with features/train (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    runs = list(args.run)
    if args.quick:
        from elora_ray import load_config, run_stages

        folder = RUNS / "affinity_halves_quick"
        cfg = load_config(None, ["model.name_or_path=tiny-llama", "model.max_length=32", "suite.samples_per_task=40",
                                 "suite.tasks_per_group=[2,2]", "featurize.dim=32", "featurize.shard_size=32"])
        run_stages(cfg, folder, "featurize")
        runs = [folder]
    if not runs:
        ap.error("give --run RUN (a run folder with features/train) or --quick")
    data = {"runs": [measure(r, args.seed) for r in runs], "quick": args.quick, "machine": machine_info(),
            "command": "affinity_halves.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    write_results("affinity_halves" + ("_quick" if args.quick else ""), data, render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
