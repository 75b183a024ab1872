"""Early stopping's ties: keep the earlier check, or the one with the lower validation loss? (issue 38, item 4.)

``train.early_stopping_metric`` is an accuracy by default, and with ~50 validation samples per task it moves in
steps of 2%: a later check often equals the best one. ``train.early_stopping_ties: earliest`` (the default) keeps
the earlier check; ``loss`` keeps the later one when its validation loss is lower. This runs the whole pipeline
both ways on the same seeds — prepare, featurise, estimate and cluster once per seed, copied to both arms, so only
training differs — and compares the ensemble's average test accuracy (paired by seed, and a paired bootstrap over
the test samples of all seeds), its validation log loss, and how many adapters kept another check.

A default changes only when the new setting is better on two mixes (the embedded suite `make demo` trains, and a
second mix given with ``--config``).

    python benchmarks/early_stopping_ties.py                        # embedded suite, seeds 0 1 2, ensemble only
    python benchmarks/early_stopping_ties.py --config benchmarks/configs/glue_ensemble_minilm.yaml --name glue
    python benchmarks/early_stopping_ties.py --quick                # tiny-bert smoke test (~2 min; not a result)

Runs resume (a finished arm is reused); writes ``benchmarks/results/early_stopping_ties_<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RUNS, current_commit, machine_info, paired_stats, write_results  # noqa: E402,I001
from elora_ray import load_config, run_pipeline, run_stages  # noqa: E402
from elora_ray.evaluate.uncertainty import correctness  # noqa: E402

ARMS = ("earliest", "loss")
BASE_SETS = ["baselines.methods=[]"]  # the ensemble alone: its adapters are where the rule acts
QUICK_SETS = ["model.name_or_path=tiny-bert", "suite.samples_per_task=60", "suite.tasks_per_group=[2,2]",
              "featurize.dim=32", "train.epochs=2", "train.lr=3e-3", "train.batch_size=8", "boost.steps=1"]


def kept_steps(run: Path) -> dict[str, int]:
    """Job id → the check it kept, from the job records."""
    out = {}
    for f in sorted((run / "train" / "jobs").glob("*.json")):
        rec = json.loads(f.read_text())
        best = rec.get("metrics", {}).get("best_step")
        if best is not None:
            out[f.stem] = int(best)
    return out


def ensemble_correct(run: Path) -> dict[str, list[float]]:
    """Per task, 1/0 per test sample for the ensemble, from the run's own outputs and weights."""
    from elora_ray.artifacts import read_prepared
    from elora_ray.ensemble.members import group_outputs, load_members, load_weights
    from elora_ray.ensemble.stage import weight_matrix
    from elora_ray.ensemble.weights import combine

    tasks = read_prepared(run)
    names, num_labels = [t.name for t in tasks], {t.name: len(t.labels) for t in tasks}
    members = load_members(run)
    split = json.loads((run / "evaluation.json").read_text()).get("split", "test")
    groups = [group_outputs(run, members, j, split, names, num_labels) for j in range(len(members.groups))]
    return {t: v.astype(float).tolist() for t, v in correctness(combine(groups, weight_matrix(load_weights(run)))).items()}


def run_arm(cfg_path: Path | None, overrides: list[str], seed: int, base: Path, out: Path) -> dict:
    if not (out / "evaluation.json").is_file():
        if out.exists():
            shutil.rmtree(out)  # a half-finished arm starts again from the shared base
        shutil.copytree(base, out)
    cfg = load_config(cfg_path, [*overrides, f"seed={seed}"])
    report = run_pipeline(cfg, out)
    ev = json.loads((out / "evaluation.json").read_text())
    weights = json.loads((out / "ensemble" / "weights.json").read_text())
    val_loss = [t["validation_loss"]["weights"] for t in weights["tasks"].values() if "validation_loss" in t]
    return {"avg_accuracy": ev["methods"]["ensemble"]["avg_accuracy"], "groups": ev["methods"]["ensemble"].get("groups"),
            "validation_log_loss": float(np.mean(val_loss)) if val_loss else None, "kept": kept_steps(out),
            "correct": ensemble_correct(out), "wall_s": report["wall_s"], "code": current_commit()}


def paired_bootstrap(a: list[dict], b: list[dict], resamples: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of the seeds' mean (a − b) average accuracy, resampling each task's test samples."""
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for x, y in zip(a, b):
        per_task = []
        for t in x:
            d = np.asarray(x[t]) - np.asarray(y[t])
            per_task.append(d[rng.integers(0, len(d), (resamples, len(d)))].mean(1))
        total += np.mean(per_task, axis=0)
    total /= len(a)
    return [float(np.percentile(total, 2.5)), float(np.percentile(total, 97.5))]


def analyse(rows: list[dict]) -> dict:
    seeds = [r["seed"] for r in rows]
    diffs = [r["loss"]["avg_accuracy"] - r["earliest"]["avg_accuracy"] for r in rows]
    changed = [sorted(j for j in r["earliest"]["kept"] if r["loss"]["kept"].get(j) != r["earliest"]["kept"][j]) for r in rows]
    return {"seeds": seeds, "loss_minus_earliest": paired_stats(diffs),
            "bootstrap95": paired_bootstrap([r["loss"]["correct"] for r in rows], [r["earliest"]["correct"] for r in rows]),
            "adapters_with_another_check": [len(c) for c in changed], "changed_jobs": changed,
            "adapters": [len(r["earliest"]["kept"]) for r in rows]}


def markdown(name: str, data: dict) -> str:
    s = data["summary"]
    st = s["loss_minus_earliest"]
    ci = "–" if st["ci95"] is None else f"[{100 * st['ci95'][0]:+.2f}, {100 * st['ci95'][1]:+.2f}]"
    lines = [f"# Early stopping's ties on `{name}`: `earliest` (default) vs `loss`", "",
             f"Same data, features, affinity and groups per seed; only `train.early_stopping_ties` differs. Ensemble "
             f"average test accuracy; overrides: `{' '.join(data['overrides']) or 'none'}`.", "",
             "| seed | earliest | loss | loss − earliest (points) | validation log loss, earliest → loss | "
             "adapters that kept another check | groups |", "|---:|---:|---:|---:|---|---:|---|"]
    for r, n_changed, n in zip(data["rows"], s["adapters_with_another_check"], s["adapters"]):
        e, lo = r["earliest"], r["loss"]
        vl = "–" if e["validation_log_loss"] is None else f"{e['validation_log_loss']:.4f} → {lo['validation_log_loss']:.4f}"
        lines.append(f"| {r['seed']} | {e['avg_accuracy']:.4f} | {lo['avg_accuracy']:.4f} | "
                     f"{100 * (lo['avg_accuracy'] - e['avg_accuracy']):+.2f} | {vl} | {n_changed} of {n} | {e['groups']} |")
    lo, hi = s["bootstrap95"]
    lines += ["", f"Paired by seed: loss − earliest {100 * st['mean']:+.2f} points, 95% t-interval {ci}, ahead in "
                  f"{st['a_ahead']} of {st['seeds']} seeds; paired bootstrap over test samples [{100 * lo:+.2f}, "
                  f"{100 * hi:+.2f}].", ""]
    m = data["machine"]
    lines.append(f"Machine: {m['cpu']} ({m['cores']} cores), {m['date']}. Command: `{data['command']}`.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=None, help="default: the embedded suite (`make demo`)")
    ap.add_argument("--name", default=None, help="default: embedded, or the config's stem (--quick: quick)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    name = args.name or ("quick" if args.quick else args.config.stem if args.config else "embedded")
    overrides = [*BASE_SETS, *(QUICK_SETS if args.quick else []), *args.overrides]
    if args.quick:
        args.seeds = args.seeds[:1]
    root = RUNS / f"early_stopping_ties_{name}"
    rows = []
    for seed in args.seeds:
        base = root / f"seed{seed}" / "base"
        cfg = load_config(args.config, [*overrides, f"seed={seed}"])
        run_stages(cfg, base, until="cluster")
        row = {"seed": seed}
        for arm in ARMS:
            print(f"seed {seed}, ties {arm}", file=sys.stderr)
            row[arm] = run_arm(args.config, [*overrides, f"train.early_stopping_ties={arm}"], seed, base,
                               root / f"seed{seed}" / arm)
        rows.append(row)
    cmd = "python benchmarks/early_stopping_ties.py " + " ".join(argv if argv is not None else sys.argv[1:])
    data = {"name": name, "overrides": overrides, "rows": rows, "summary": analyse(rows), "machine": machine_info(),
            "command": cmd.strip()}
    text = markdown(name, data)
    write_results(f"early_stopping_ties_{name}", data, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
