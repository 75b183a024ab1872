"""Default training settings, chosen by a measured sweep (issue 19: "defaults that learn").

Trains ONE adapter on all tasks of a config (the single-adapter baseline: ``cluster.num_groups=1``,
no boosting, no other baselines) under several training settings, and compares each with the
untrained probed model (θ*: the adapter at initialisation with the linear-probe heads) and with the
most common label, on the test split with 95% bootstrap intervals.

The setting is *chosen on validation*: the average over tasks of the validation accuracy at the
check early stopping kept, averaged over seeds (the figure the reports show on test); test accuracy
is only reported. Featurisation and the data split are done once per seed and
copied for every setting (their artifacts do not depend on the training settings).

    python benchmarks/training_sweep.py                       # GLUE/SuperGLUE mix, seed 0
    python benchmarks/training_sweep.py --seeds 0 1 --points current linear_1e-3
    python benchmarks/training_sweep.py --suite               # the embedded suite (what `make demo` trains)
    python benchmarks/training_sweep.py --quick               # tiny-bert smoke test
    python benchmarks/training_sweep.py --seeds 1 2 --reuse-recorded   # add seeds 1, 2 to the recorded sweep

Writes ``benchmarks/results/training_sweep_<name>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RESULTS, RUNS, current_commit, machine_info, paired_stats, save_figure, write_results  # noqa: E402,I001
from elora_ray import load_config, run_pipeline, run_stages  # noqa: E402

DEFAULT_CONFIG = HERE / "configs" / "glue_ensemble_minilm.yaml"

#: name -> train.* settings. "current" is the package default before this sweep.
POINTS: dict[str, dict] = {
    "current": {"lr": 1e-3, "schedule": "constant", "warmup_fraction": 0.0, "validate_at_start": False},
    "start_1e-3": {"lr": 1e-3, "schedule": "constant", "warmup_fraction": 0.0, "validate_at_start": True},
    "linear_1e-3": {"lr": 1e-3, "schedule": "linear", "warmup_fraction": 0.1, "validate_at_start": True},
    "linear_3e-4": {"lr": 3e-4, "schedule": "linear", "warmup_fraction": 0.1, "validate_at_start": True},
    "linear_3e-3": {"lr": 3e-3, "schedule": "linear", "warmup_fraction": 0.1, "validate_at_start": True},
    "linear_1e-4": {"lr": 1e-4, "schedule": "linear", "warmup_fraction": 0.1, "validate_at_start": True},
    "linear_3e-4_frozen_heads": {"lr": 3e-4, "schedule": "linear", "warmup_fraction": 0.1, "validate_at_start": True,
                                 "train_heads": False},
    # early stopping on validation accuracy (the average over tasks), a longer budget: validation loss rises
    # while accuracy still improves (more confident mistakes), so stopping on loss ends training early
    # the same budget and start check, stopping on validation loss: what the metric alone changes
    "loss_6ep_1e-3": {"lr": 1e-3, "schedule": "constant", "warmup_fraction": 0.0, "validate_at_start": True,
                      "early_stopping_metric": "loss", "epochs": 6.0, "patience": 4},
    "acc_6ep_1e-3": {"lr": 1e-3, "schedule": "constant", "warmup_fraction": 0.0, "validate_at_start": True,
                     "early_stopping_metric": "task_accuracy", "epochs": 6.0, "patience": 4},
    "acc_6ep_1e-3_frozen_heads": {"lr": 1e-3, "schedule": "constant", "warmup_fraction": 0.0, "validate_at_start": True,
                                  "early_stopping_metric": "task_accuracy", "epochs": 6.0, "patience": 4,
                                  "train_heads": False},
}
#: what every point shares (the method-level settings that are not being swept)
SHARED = ["cluster.num_groups=1", "boost.steps=0", "baselines.methods=[]"]


def point_overrides(settings: dict, epochs: float) -> list[str]:
    """``train.*`` overrides of a point; a point's own ``epochs`` wins over ``--epochs``."""
    return [f"train.{k}={json.dumps(v)}" for k, v in {"epochs": epochs, **settings}.items()]


def task_accuracy(check: dict) -> float:
    """A check's validation accuracy with every task counted once (records from before the loop
    stored ``task_accuracy`` are averaged from their per-task figures)."""
    if "task_accuracy" in check:
        return float(check["task_accuracy"])
    per = check.get("per_task")
    return float(np.mean([v["accuracy"] for v in per.values()])) if per else float(check["accuracy"])


def kept_check(evals: list[dict], metric: str) -> dict:
    """The check early stopping kept: the first with the best ``metric`` (lowest loss, highest accuracy),
    as :func:`elora_ray.train.loop.train_adapter` keeps it."""
    if metric == "loss":
        return min(evals, key=lambda e: e["loss"])
    key = task_accuracy if metric == "task_accuracy" else (lambda e: float(e["accuracy"]))
    return max(evals, key=key)


def best_validation(run: Path, metric: str = "loss") -> dict:
    """The single adapter's validation curve and the check early stopping kept (by ``metric``)."""
    rec = json.loads((run / "train" / "jobs" / "group-0.json").read_text())
    evals = rec["metrics"]["evals"]
    best = kept_check(evals, metric)
    return {"val_loss": best["loss"], "val_accuracy": task_accuracy(best), "best_step": best["step"],
            "steps": rec["metrics"]["steps"], "stopped_early": bool(rec["metrics"]["stopped_early"]),
            "train_seconds": rec["metrics"]["train_seconds"], "curve": evals}


def recorded_rows(path: Path) -> dict[tuple[int, str], dict]:
    """Rows of an earlier recorded sweep (its results JSON), keyed by (seed, setting)."""
    if not path.exists():
        return {}
    return {(r["seed"], r["point"]): r for r in json.loads(path.read_text()).get("rows", [])}


def reusable(row: dict | None, overrides: list[str]) -> bool:
    """A recorded row stands for a (seed, setting) only if it ran with exactly these overrides."""
    return row is not None and list(row.get("overrides", [])) == list(overrides)


def run_point(cfg_path: Path | None, overrides: list[str], seed: int, name: str, base: Path, out: Path) -> dict:
    if not (out / "evaluation.json").exists():
        if out.exists():
            shutil.rmtree(out)  # a half-finished point: start it again from the shared base
        shutil.copytree(base, out)
    cfg = load_config(cfg_path, [*overrides, f"seed={seed}"])
    report = run_pipeline(cfg, out)
    metric = cfg.train.early_stopping_metric
    ev = json.loads((out / "evaluation.json").read_text())
    single = ev["methods"]["ensemble"]  # one group of all tasks, no boosting: the single adapter
    theta = ev["ensemble_ablations"]["theta_star"]
    return {
        "point": name, "seed": seed, "overrides": overrides,
        "test_accuracy": single["avg_accuracy"], "test_ci95": single.get("ci95"),
        "test_per_task": single["per_task"], "tasks_at_majority": single.get("tasks_at_majority", []),
        "theta_star_accuracy": theta["avg_accuracy"], "theta_star_per_task": theta["per_task"],
        "majority_accuracy": ev["majority"]["avg_accuracy"],
        "wall_s": report["wall_s"], "metric": metric, "code": current_commit(), **best_validation(out, metric),
    }


def aggregate(rows: list[dict]) -> list[dict]:
    out = []
    for name in dict.fromkeys(r["point"] for r in rows):
        rs = [r for r in rows if r["point"] == name]

        def stat(key: str) -> tuple[float, float]:
            v = np.array([r[key] for r in rs], dtype=float)
            return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0

        out.append({"point": name, "seeds": [r["seed"] for r in rs], "val_loss": stat("val_loss"),
                    "val_accuracy": stat("val_accuracy"), "test_accuracy": stat("test_accuracy"),
                    "theta_star_accuracy": stat("theta_star_accuracy"), "majority_accuracy": stat("majority_accuracy"),
                    "gain_over_theta_star": stat("gain"), "ci95": rs[0]["test_ci95"],
                    "stopped_early": sum(r["stopped_early"] for r in rs), "train_seconds": stat("train_seconds"),
                    "kept_start": sum(r["best_step"] == 0 for r in rs),
                    "gain_ci95": paired_stats([r["gain"] for r in rs])["ci95"],
                    "seeds_ahead": sum(r["gain"] > 0 for r in rs)})
    return out


def render(data: dict) -> str:
    lines = [f"# Training-settings sweep: {data['name']}", "",
             f"Config `{data['config']}`; one adapter on all {data['tasks']} tasks (`{' '.join(SHARED)}`), "
             f"{data['epochs']} epochs (`--epochs`) and early stopping on validation "
             f"{data.get('metric', 'loss').replace('_', ' ')} (patience {data['patience']}) unless a "
             f"setting's train settings say otherwise; seeds {data['seeds']}. \"val loss\" and \"val acc\" (the average over tasks) are "
             "those of the check early stopping kept; the setting is chosen by that validation accuracy (ties: the first "
             "listed); test accuracy is reported only. \"kept θ*\": with `validate_at_start` the starting point (θ*, "
             "the probed heads) is a checkpoint, and early stopping kept it because no later check beat it.", "",
             "Figures are mean ± std over the setting's seeds; the 95% CI is the bootstrap over test samples of its first seed.", "",
             "| setting | train settings | seeds | val loss | val acc | test acc | 95% CI (first seed) | θ* test acc | "
             "test − θ* | most common label | stopped early | kept θ* | train s |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for a in data["aggregate"]:
        s = POINTS.get(a["point"], {})
        ci = f"{a['ci95'][0]:.3f}–{a['ci95'][1]:.3f}" if a["ci95"] else "—"
        chosen = " **(chosen)**" if a["point"] == data["chosen"] else ""

        def pm(v: tuple[float, float], f: str = ".4f") -> str:
            return f"{v[0]:{f}}" + (f" ± {v[1]:{f.lstrip('+')}}" if len(a["seeds"]) > 1 else "")

        lines.append(f"| {a['point']}{chosen} | {', '.join(f'{k}={v}' for k, v in s.items())} | {len(a['seeds'])} | "
                     f"{pm(a['val_loss'])} | "
                     f"{pm(a['val_accuracy'], '.3f')} | {pm(a['test_accuracy'], '.3f')} | {ci} | "
                     f"{pm(a['theta_star_accuracy'], '.3f')} | {pm(a['gain_over_theta_star'], '+.3f')} | "
                     f"{a['majority_accuracy'][0]:.3f} | {a['stopped_early']}/{len(a['seeds'])} | "
                     f"{a['kept_start']}/{len(a['seeds'])} | {a['train_seconds'][0]:.0f} |")
    paired = [a for a in data["aggregate"] if a.get("gain_ci95")]
    if paired:
        lines += ["", "Trained adapter − θ* on test, paired by seed (95% t-interval over seeds):", "",
                  "| setting | difference | 95% interval | seeds ahead | per seed |", "|---|---:|---|---:|---|"]
        for a in paired:
            lo, hi = a["gain_ci95"]
            per_seed = ", ".join(f"{r['seed']}: {r['gain']:+.3f}" for r in data["rows"] if r["point"] == a["point"])
            lines.append(f"| {a['point']} | {a['gain_over_theta_star'][0]:+.3f} | [{lo:+.3f}, {hi:+.3f}] | "
                         f"{a['seeds_ahead']}/{len(a['seeds'])} | {per_seed} |")
    lines += ["", "Per task (test accuracy, mean over each setting's seeds; θ* over all rows):", "",
              "| task | θ* | " + " | ".join(a["point"] for a in data["aggregate"]) + " |",
              "|---|---:|" + "---:|" * len(data["aggregate"])]
    first = {r["point"]: r for r in data["rows"] if r["seed"] == data["seeds"][0]}
    any_row = data["rows"][0]
    for t in any_row["test_per_task"]:
        theta = np.mean([r["theta_star_per_task"][t] for r in data["rows"]])
        lines.append(f"| {t} | {theta:.3f} | " + " | ".join(
            f"{np.mean([r['test_per_task'][t] for r in data['rows'] if r['point'] == a['point']]):.3f}"
            for a in data["aggregate"]) + " |")
    curves = {p: r["curve"] for p, r in first.items() if r["curve"] and "per_task" in r["curve"][0]}
    start = next((c[0]["per_task"] for c in curves.values() if c[0]["step"] == 0), None)  # θ*: a step-0 check
    if curves and start is not None:  # records from before per-task checks have no such table
        lines += ["", "Per task (validation loss, first seed): at θ* (a start check) and at the check early "
                  "stopping kept (best), with the change — which tasks one shared adapter helps and which it hurts:", "",
                  "| task | θ* | " + " | ".join(f"{p} (best) | Δ" for p in curves) + " |",
                  "|---|---:|" + "---:|---:|" * len(curves)]
        for t in any_row["test_per_task"]:
            cells = []
            for p, curve in curves.items():
                end = kept_check(curve, first[p].get("metric", "loss"))["per_task"][t]["loss"]
                cells.append(f"{end:.3f} | {end - start[t]['loss']:+.3f}")
            lines.append(f"| {t} | {start[t]['loss']:.3f} | " + " | ".join(cells) + " |")
    reused = [r for r in data["rows"] if r.get("reused")]
    if reused:
        lines += ["", "Recorded by an earlier run of this script with the same overrides and taken as they are "
                  "(`--reuse-recorded`): " + ", ".join(f"seed {r['seed']} {r['point']}"
                                                       + (f" (code {r['code']})" if r.get("code") else "")
                                                       for r in reused) + "."]
    m = data["machine"]
    lines += ["", f"Machine: {m['cpu']} ({m['cores']} cores), {m['date']}. Command: `python benchmarks/{data['command']}`. "
              f"Wall time {data['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def plot(path: Path, data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = [r for r in data["rows"] if r["seed"] == data["seeds"][0]]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    styles = ["-", "--", ":", "-."]
    for i, r in enumerate(first):  # settings that share their first steps overlap: line styles and the kept check tell them apart
        steps = [e["step"] for e in r["curve"]]
        style = dict(ls=styles[i % len(styles)], lw=2.5 - 0.5 * (i % 3), marker="o", ms=3)
        line, = ax_loss.plot(steps, [e["loss"] for e in r["curve"]], label=r["point"], **style)
        ax_acc.plot(steps, [task_accuracy(e) for e in r["curve"]], label=r["point"], color=line.get_color(), **style)
        kept = kept_check(r["curve"], r.get("metric", "loss"))
        for ax, y in ((ax_loss, kept["loss"]), (ax_acc, task_accuracy(kept))):
            ax.plot([kept["step"]], [y], marker="*", ms=14, color=line.get_color(), mec="black", mew=0.6, ls="none")
    ax_acc.plot([], [], marker="*", ms=10, color="grey", mec="black", ls="none", label="check kept")
    ax_acc.axhline(first[0]["majority_accuracy"], color="grey", ls=":", lw=1)
    ax_acc.annotate("most common label (test)", (0, first[0]["majority_accuracy"]), fontsize=7, color="grey",
                    xytext=(2, 2), textcoords="offset points")
    ax_loss.set_ylabel("validation loss (all samples)")
    ax_acc.set_ylabel("validation accuracy (average over tasks)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("training step")
    fig.suptitle(f"{data['name']}: validation per check (seed {data['seeds'][0]})")
    ax_acc.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    save_figure(fig, path)


def record(rows: list[dict], recorded: dict, args, argv, config, name: str, overrides: list[str], t0: float) -> dict:
    """The sweep's results so far (``rows`` plus every other recorded row with the same overrides), written
    as ``training_sweep_<name>.{json,md,png}``."""
    rows = list(rows)
    done = {(r["seed"], r["point"]) for r in rows}
    for (seed, point), row in recorded.items():  # other recorded seeds and settings made with the same overrides
        if (seed, point) not in done and point in POINTS and \
                reusable(row, [*overrides, *point_overrides(POINTS[point], args.epochs)]):
            rows.append({**row, "reused": True})
    order = list(POINTS)
    rows.sort(key=lambda r: (order.index(r["point"]), r["seed"]))
    seeds = sorted({r["seed"] for r in rows})
    agg = aggregate(rows)
    # chosen on validation by what the reports show on test: the average accuracy over tasks (ties: the first listed)
    chosen = max(agg, key=lambda a: a["val_accuracy"][0])["point"]
    cfg = load_config(config, overrides)
    data = {"name": name, "config": str(config.resolve().relative_to(HERE.parent)) if config else "embedded default",
            "overrides": overrides, "seeds": seeds, "epochs": args.epochs, "patience": cfg.train.patience,
            "metric": cfg.train.early_stopping_metric,
            "tasks": len(rows[0]["test_per_task"]), "points": {p: POINTS[p] for p in args.points},
            "rows": rows, "aggregate": agg, "chosen": chosen, "seconds": round(time.perf_counter() - t0, 1),
            "command": "training_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": machine_info()}
    path = write_results(f"training_sweep_{name}", data, render(data))
    plot(path.with_suffix(".png"), data)
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--name", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--points", nargs="+", default=list(POINTS), choices=list(POINTS))
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--suite", action="store_true", help="the embedded suite with the default model (what the demo runs)")
    ap.add_argument("--quick", action="store_true", help="embedded suite + tiny-bert (smoke test)")
    ap.add_argument("--reuse-recorded", action="store_true",
                    help="keep every (seed, setting) of the recorded results JSON that ran with the same overrides "
                         "(its run directory may be gone): it is not trained again, and the table shows it")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the markdown table and plot from the recorded results JSON (no training)")
    args = ap.parse_args(argv)
    overrides = [*SHARED, *args.overrides]
    if args.suite:
        config, name = None, args.name or "suite"
    elif args.quick:
        config, name = None, args.name or "quick"
        overrides = ["model.name_or_path=tiny-bert", "suite.samples_per_task=48", "suite.tasks_per_group=[2,2]",
                     "featurize.dim=32", *overrides]
    else:
        config, name = args.config, args.name or args.config.stem
    if args.render_only:
        recorded = RESULTS / f"training_sweep_{name}.json"
        if not recorded.exists():
            ap.error(f"--render-only: no recorded sweep {recorded} (run the sweep first, or pass --name)")
        data = json.loads(recorded.read_text())
        path = write_results(f"training_sweep_{name}", data, render(data))
        plot(path.with_suffix(".png"), data)
        return 0
    t0, rows = time.perf_counter(), []
    root = RUNS / f"training_sweep_{name}"
    recorded = recorded_rows(RESULTS / f"training_sweep_{name}.json") if args.reuse_recorded else {}
    for seed in args.seeds:
        base = root / f"seed{seed}" / "base"
        todo = [p for p in args.points if not reusable(recorded.get((seed, p)),
                                                          [*overrides, *point_overrides(POINTS[p], args.epochs)])]
        if todo:
            run_stages(load_config(config, [*overrides, f"seed={seed}"]), base, until="cluster")
        for point in args.points:
            o = [*overrides, *point_overrides(POINTS[point], args.epochs)]
            if point in todo:
                row = run_point(config, o, seed, point, base, root / f"seed{seed}" / point)
                row["gain"] = row["test_accuracy"] - row["theta_star_accuracy"]
            else:
                row = {**recorded[(seed, point)], "reused": True}
            rows.append(row)
            print(f"seed {seed} {point}{' (recorded)' if row.get('reused') else ''}: val loss {row['val_loss']:.4f}, "
                  f"test {row['test_accuracy']:.4f} (θ* {row['theta_star_accuracy']:.4f})", flush=True)
        # written after every seed: a sweep stopped later keeps the seeds it finished (--reuse-recorded adds the rest)
        data = record(rows, recorded, args, argv, config, name, overrides, t0)
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
