"""Ensemble vs baselines (paper Figure 3 / Table 7): accuracy and cost over several seeds.

Runs the whole pipeline (``elora run``) once per seed on a config (default: the GLUE/SuperGLUE
mix with MiniLM) and aggregates every method's average test accuracy (mean ± std over seeds),
training FLOPs, peak memory and wall time into
``benchmarks/results/ensemble_accuracy_<name>.{json,md,png}``.

    python benchmarks/ensemble_accuracy.py                          # GLUE/SuperGLUE mix, 3 seeds
    python benchmarks/ensemble_accuracy.py --seeds 0 1 2 3 4
    python benchmarks/ensemble_accuracy.py --suite                  # the embedded suite (default model)
    python benchmarks/ensemble_accuracy.py --quick                  # tiny-bert smoke test

Each seed changes the adapter initialisation, the projection, the sampled subsets and the
batch order; the data splits stay fixed. Seeds already finished are reused (the pipeline
resumes from its run directory).

Each finished seed is also kept as ``benchmarks/results/ensemble_accuracy_<name>_seeds/seed<k>.json``
(its report, the commit it ran on and a fingerprint of the configuration without the seed), so a
long multi-seed run can be spread over several sessions or machines: a seed whose record matches
the configuration is not run again (``--rerun`` forces it); the table names every commit involved.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RESULTS, RUNS, current_commit, machine_info, paired_stats, save_figure, write_results  # noqa: E402,I001
from elora_ray import load_config  # noqa: E402
from elora_ray.io import fingerprint  # noqa: E402
from elora_ray import run_pipeline  # noqa: E402
from elora_ray.report.plots import METHOD_LABELS  # noqa: E402

DEFAULT_CONFIG = HERE / "configs" / "glue_ensemble_minilm.yaml"


def aggregate(reports: list[dict]) -> dict:
    methods = list(reports[0]["methods"])
    out = {}
    for m in methods:
        acc = np.array([r["methods"][m]["avg_accuracy"] for r in reports])
        tasks = list(reports[0]["methods"][m]["per_task"])
        out[m] = {
            "avg_accuracy_mean": float(acc.mean()),
            "avg_accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "avg_accuracy_per_seed": acc.tolist(),
            "per_task_mean": {t: float(np.mean([r["methods"][m]["per_task"][t] for r in reports])) for t in tasks},
            "train_flops_mean": float(np.mean([r["methods"][m]["train_flops"] for r in reports])),
            "peak_memory_mb_mean": float(np.mean([r["methods"][m]["peak_memory_mb"] for r in reports])),
            "wall_s_mean": float(np.mean([r["methods"][m]["wall_s"] for r in reports])),
            "adapters": reports[0]["methods"][m]["adapters"],
            "adapters_range": [min(r["methods"][m]["adapters"] for r in reports), max(r["methods"][m]["adapters"] for r in reports)],
            "adapter_parameters": reports[0]["methods"][m]["adapter_parameters"],
            # the 95% bootstrap interval over test samples (passage units) of each seed's average accuracy
            "ci95_per_seed": [r["methods"][m].get("ci95") for r in reports],
            # tasks whose test accuracy is at or below always predicting the most common training label
            "tasks_at_majority_per_seed": [r["methods"][m].get("tasks_at_majority") for r in reports],
        }
    abl = {}
    for k in reports[0].get("ensemble_ablations", {}):
        acc = np.array([r["ensemble_ablations"][k]["avg_accuracy"] for r in reports])
        abl[k] = {"avg_accuracy_mean": float(acc.mean()), "avg_accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0}
    pairs = [("ensemble", m) for m in methods if m != "ensemble"]
    if "groups_only" in abl:  # the grouping alone (own group's adapter, no boosting) against other partitions
        pairs += [("groups_only", m) for m in ("random_groups", "gradient_cosine") if m in methods]
    if "theta_star" in abl:
        pairs += [(m, "theta_star") for m in ("ensemble", "single_adapter") if m in methods]
    majority = majority_row(reports)
    return {"methods": out, "ensemble_ablations": abl, "paired": [paired(reports, a, b) for a, b in pairs],
            **({"majority": majority} if majority else {})}


def majority_row(reports: list[dict]) -> dict | None:
    """Always predicting each task's most common training label: average and per-task test accuracy
    (the same in every seed: the splits do not depend on the run seed). None for records made before
    the evaluation stored it."""
    if not all(r.get("majority") for r in reports):
        return None
    m = reports[0]["majority"]
    return {"avg_accuracy": float(m["avg_accuracy"]), "per_task": {t: float(v["accuracy"]) for t, v in m["per_task"].items()}}


def seed_accuracy(report: dict, key: str) -> float:
    """Average accuracy of a method, or of an ensemble ablation (e.g. ``theta_star``), in one seed's report."""
    if key in report["methods"]:
        return float(report["methods"][key]["avg_accuracy"])
    return float(report["ensemble_ablations"][key]["avg_accuracy"])


def paired(reports: list[dict], a: str, b: str) -> dict:
    """a − b paired by seed (:func:`benchmarks.common.paired_stats`)."""
    return {"a": a, "b": b, **paired_stats([seed_accuracy(r, a) - seed_accuracy(r, b) for r in reports])}


def verdict(p: dict) -> str:
    if p["ci95"] is None:
        return "one seed: no interval"
    lo, hi = p["ci95"]
    if p["std"] == 0 and p["mean"] == 0:
        return "identical in every seed"
    if lo > 0:
        return "ahead (95% interval above 0)"
    if hi < 0:
        return "behind (95% interval below 0)"
    return "not distinguishable from 0 at these seeds"


REPORT_KEYS = ("methods", "ensemble_ablations", "boosting", "groups", "evaluation_split", "tasks", "majority", "comparisons")


def config_fingerprint(cfg) -> str:
    """The configuration without its seed and without where the data lives (an absolute path that differs
    between checkouts and machines): seeds of one benchmark share it."""
    return fingerprint({k: v for k, v in cfg.model_dump(mode="json").items() if k not in ("seed", "data_root")})


def seed_record_path(name: str, seed: int) -> Path:
    return RESULTS / f"ensemble_accuracy_{name}_seeds" / f"seed{seed}.json"


def load_seed_record(name: str, seed: int, config_fp: str) -> dict | None:
    """The stored report of ``seed`` if it was made with this configuration, else None."""
    path = seed_record_path(name, seed)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("config_fingerprint") != config_fp:
        print(f"{path}: made with another configuration; running seed {seed} again", file=sys.stderr)
        return None
    return record


def save_seed_record(name: str, seed: int, config_fp: str, report: dict, seconds: float) -> dict:
    record = {"seed": seed, "config_fingerprint": config_fp, "commit": current_commit(), "machine": machine_info(),
              "seconds": round(seconds, 1), "report": {k: report[k] for k in REPORT_KEYS if k in report}}
    write_results(f"seed{seed}", record, f"seed {seed}: see seed{seed}.json\n", RESULTS / f"ensemble_accuracy_{name}_seeds")
    (RESULTS / f"ensemble_accuracy_{name}_seeds" / f"seed{seed}.md").unlink(missing_ok=True)
    return record


def _adapters(r: dict) -> str:
    lo, hi = r.get("adapters_range", [r["adapters"], r["adapters"]])
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _interval(r: dict) -> str:
    ci = (r.get("ci95_per_seed") or [None])[0]
    return "–" if not ci else f"{ci[0]:.3f}–{ci[1]:.3f}"


def _at_majority(r: dict) -> str:
    per_seed = [x for x in r.get("tasks_at_majority_per_seed", []) if x is not None]
    return "–" if not per_seed else str(sum(len(x) for x in per_seed))


def render(name: str, data: dict) -> str:
    agg = data["aggregate"]["methods"]
    ens = agg["ensemble"]
    lines = [
        f"# Ensemble vs baselines: {name}",
        "",
        f"Config `{data['config']}` with {' '.join(data['overrides']) or 'no overrides'}; seeds {data['seeds']}; "
        f"{data['tasks']} tasks; evaluated on the {data['split']} split. Machine: {data['machine']['cpu']} "
        f"({data['machine']['cores']} cores), GPU: {data['machine']['gpu']}; {data['machine']['date']}.",
        "",
        "± is the standard deviation over seeds (training noise); the 95% interval is a bootstrap over the test "
        "samples of one seed (test-set noise; a MultiRC passage is resampled whole), shown for the first seed. "
        "\"tasks at most common label\": tasks whose accuracy is at or below always answering the task's most "
        "common training label, summed over seeds.",
        "",
        "| method | avg accuracy (mean ± std) | 95% interval (seed " + str(data["seeds"][0]) + ") | Δ vs ensemble | "
        "tasks at most common label | train FLOPs | FLOPs vs ensemble | peak memory MB | wall s | adapters (over seeds) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, r in agg.items():
        lines.append(
            f"| {METHOD_LABELS.get(m, m)} | {r['avg_accuracy_mean']:.4f} ± {r['avg_accuracy_std']:.4f} | {_interval(r)} | "
            f"{r['avg_accuracy_mean'] - ens['avg_accuracy_mean']:+.4f} | {_at_majority(r)} | {r['train_flops_mean']:.3g} | "
            f"{r['train_flops_mean'] / ens['train_flops_mean']:.2f}× | {r['peak_memory_mb_mean']:.0f} | {r['wall_s_mean']:.0f} | {_adapters(r)} |"
        )
    majority = data["aggregate"].get("majority")
    if majority:
        lines.append(f"| always the most common training label | {majority['avg_accuracy']:.4f} | – | "
                     f"{majority['avg_accuracy'] - ens['avg_accuracy_mean']:+.4f} | – | 0 | – | – | – | 0 |")
    tasks = list(ens["per_task_mean"])
    lines += ["", "Per-task accuracy (mean over seeds; ≤ marks a mean at or below the most common label):", "",
              "| task | " + " | ".join(METHOD_LABELS.get(m, m) for m in agg) + (" | most common label |" if majority else " |"),
              "|---|" + "---:|" * (len(agg) + (1 if majority else 0))]
    for t in tasks:
        floor = majority["per_task"].get(t) if majority else None
        cells = [f"{agg[m]['per_task_mean'][t]:.3f}" + (" ≤" if floor is not None and agg[m]["per_task_mean"][t] <= floor + 1e-9 else "")
                 for m in agg]
        lines.append(f"| {t} | " + " | ".join(cells) + (f" | {floor:.3f} |" if floor is not None else " |"))
    lines += ["", "Ensemble ablations (same adapters):", "", "| variant | avg accuracy |", "|---|---:|"]
    for k, r in data["aggregate"]["ensemble_ablations"].items():
        lines.append(f"| {k} | {r['avg_accuracy_mean']:.4f} ± {r['avg_accuracy_std']:.4f} |")
    if data["aggregate"].get("paired"):
        names = {"theta_star": "θ* (untrained, probed heads)", "groups_only": "our groups alone (own group's adapter, no boosting)"}
        label = lambda k: names.get(k) or METHOD_LABELS.get(k, k)  # noqa: E731
        lines += ["", "Paired by seed (same splits; difference of average accuracy, 95% t-interval over seeds):", "",
                  "| comparison | mean difference | std | 95% interval | seeds ahead | verdict |", "|---|---:|---:|---:|---:|---|"]
        for pr in data["aggregate"]["paired"]:
            ci = "–" if pr["ci95"] is None else f"[{pr['ci95'][0]:+.4f}, {pr['ci95'][1]:+.4f}]"
            lines.append(f"| {label(pr['a'])} − {label(pr['b'])} | {pr['mean']:+.4f} | {pr['std']:.4f} | "
                         f"{ci} | {pr['a_ahead']}/{pr['seeds']} | {verdict(pr)} |")
    boot = [(seed, r["comparisons"]["ensemble_minus_single_adapter"]) for seed, r in zip(data["seeds"], data.get("per_seed", []))
            if (r.get("comparisons") or {}).get("ensemble_minus_single_adapter")]
    if boot:
        lines += ["", "EnsembleLoRA − single adapter within each seed (paired bootstrap over the test samples, 95%):", "",
                  "| seed | difference | 95% interval |", "|---:|---:|---|"]
        lines += [f"| {seed} | {b['difference']:+.4f} | [{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}] |" for seed, b in boot]
    lines += ["", "Groups per seed: " + "; ".join(f"seed {s}: {g}" for s, g in zip(data["seeds"], data["groups"])), ""]
    if data.get("commits"):
        lines += ["Code each seed ran on: " + ", ".join(f"seed {s}: {c}" for s, c in zip(data["seeds"], data["commits"]))
                  + "; seconds per seed: " + ", ".join(f"{x:.0f}" for x in data.get("seconds_per_seed", [])), ""]
    return "\n".join(lines)


def plot(path: Path, data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = data["aggregate"]["methods"]
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
    names = list(agg)
    means = [agg[m]["avg_accuracy_mean"] for m in names]
    stds = [agg[m]["avg_accuracy_std"] for m in names]
    colors = ["tab:red" if m == "ensemble" else "tab:blue" for m in names]
    ax[0].bar(range(len(names)), means, yerr=stds, color=colors, capsize=4)
    ax[0].set_xticks(range(len(names)), [METHOD_LABELS.get(m, m) for m in names], rotation=30, ha="right")
    majority = (data["aggregate"].get("majority") or {}).get("avg_accuracy")
    bottom = max(0.0, min([*means, *([majority] if majority is not None else [])]) - 0.08)
    ax[0].set_ylim(bottom, min(1.0, max(means) + 0.05))
    ax[0].set_ylabel(f"average {data['split']} accuracy (± std over {len(data['seeds'])} seeds)"
                     + (f"\naxis starts at {bottom:.2f}, not 0" if bottom > 0 else ""))
    theta = data["aggregate"]["ensemble_ablations"].get("theta_star")
    if theta:  # the no-training baseline: the base model with its probed heads
        for a in ax:
            a.axhline(theta["avg_accuracy_mean"], color="gray", ls="--", lw=1, label="θ* (no fine-tuning)")
    if majority is not None:
        ax[0].axhline(majority, color="black", ls=":", lw=1, label="always the most common label")
    ax[0].grid(axis="y", alpha=0.3)
    if theta or majority is not None:
        ax[0].legend(fontsize=7, loc="upper right")
    flops = [agg[m]["train_flops_mean"] for m in names if agg[m]["train_flops_mean"] > 0]
    log_axis = bool(flops) and max(flops) / min(flops) >= 10  # within one decade a log axis only crowds its labels
    unit = 10.0 ** np.floor(np.log10(min(flops))) if flops and not log_axis else 1.0
    for m in names:
        r = agg[m]
        ax[1].errorbar(r["train_flops_mean"] / unit, r["avg_accuracy_mean"], yerr=r["avg_accuracy_std"],
                       fmt="*" if m == "ensemble" else "o", ms=12 if m == "ensemble" else 7, capsize=3,
                       label=METHOD_LABELS.get(m, m))
    if log_axis:
        ax[1].set_xscale("log")
    ax[1].set_xlabel("training FLOPs" + (f" (× 1e{int(np.log10(unit))})" if unit != 1.0 else "")
                     + " (ensemble includes featurisation)")
    ax[1].set_ylabel("average accuracy")
    ax[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax[1].grid(alpha=0.3)
    fig.suptitle(f"Ensemble vs baselines: {data['name']}")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--name", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--suite", action="store_true", help="the embedded suite with the default model")
    ap.add_argument("--quick", action="store_true", help="embedded suite + tiny-bert (smoke test)")
    ap.add_argument("--rerun", action="store_true", help="run every seed even if a matching record is stored")
    args = ap.parse_args(argv)
    overrides = list(args.overrides)
    if args.quick:
        config, name = None, args.name or "quick"
        overrides = ["model.name_or_path=tiny-bert", "suite.samples_per_task=48", "suite.tasks_per_group=[2,2]",
                     "featurize.dim=32",
                     "estimate.num_subsets=30", "train.epochs=2", *overrides]
    elif args.suite:
        config, name = None, args.name or "suite"
    else:
        config, name = args.config, args.name or args.config.stem
    reports, records, t0 = [], [], time.perf_counter()
    for seed in args.seeds:
        cfg = load_config(config, [*overrides, f"seed={seed}"])
        config_fp = config_fingerprint(cfg)
        record = None if args.rerun else load_seed_record(name, seed, config_fp)
        if record is None:
            t_seed = time.perf_counter()
            report = run_pipeline(cfg, RUNS / f"ensemble_{name}" / f"seed{seed}")
            record = save_seed_record(name, seed, config_fp, report, time.perf_counter() - t_seed)
        else:
            print(f"seed {seed}: reusing {seed_record_path(name, seed)} (commit {record['commit']})")
        records.append(record)
        reports.append(record["report"])
    data = {
        "name": name,
        "config": str(config.resolve().relative_to(HERE.parent)) if config else "embedded default",
        "overrides": overrides,
        "seeds": args.seeds,
        "split": reports[0]["evaluation_split"],
        "tasks": len(reports[0]["tasks"]),
        "groups": [r["groups"] for r in reports],
        "per_seed": [{"seed": s, "methods": r["methods"], "ensemble_ablations": r["ensemble_ablations"],
                      "boosting": r["boosting"], "comparisons": r.get("comparisons", {})} for s, r in zip(args.seeds, reports)],
        "aggregate": aggregate(reports),
        "seconds": round(time.perf_counter() - t0, 1),
        "commits": [r["commit"] for r in records],
        "seconds_per_seed": [r["seconds"] for r in records],
        "machine": machine_info(),
    }
    result = f"ensemble_accuracy_{name}"
    path = write_results(result, data, render(name, data))
    plot(path.with_suffix(".png"), data)
    print(render(name, data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
