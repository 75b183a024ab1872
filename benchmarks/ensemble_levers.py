"""The ensemble's combination levers (issue 38, item 4), measured on finished runs without training anything.

For every finished run folder of the given mixes (default: the decoder benchmark's seeds, LoRA and QLoRA, and the
full reruns of the add-task benchmark on the embedded 10-task suite and the planted 21-task suite), from the saved
group and boosting outputs:

* **combination weights** — ``learned`` (the default: minimise the validation log loss), ``shrunk`` (learned,
  pulled toward uniform by the amount 5-fold cross-validation on the validation set picks:
  ``ensemble.weights: shrunk``), ``uniform`` and ``own_group`` (each task its own group's adapter only);
* **per-task early stopping** (not built): from each group adapter's per-check validation figures, how far each
  task's own best check lies from the one its group stopped at, and the validation accuracy between them;
* **early-stopping ties** (``train.early_stopping_ties``): of every adapter job the run trained, how many kept a
  check over a later one with the same early-stopping metric and a lower validation loss, and how many of those
  kept the untrained start θ*;
* **exact ties in the stored class logits**: the share of test predictions whose top class logit equals another's
  exactly (argmax then says the first label; runs from before class logits were fp32 under bf16 have them);
* **boosting steps** — every step as the run took it (the default), or ``drop val-raising``: a step whose learner
  raised its group's validation log loss enters with coefficient 0 (``boost.keep: if_validation_improves``;
  exact for the last step of a group — with ``boost.steps: 1``, as in every run here, for every step).

Each combination's average test accuracy, its difference to the default (learned weights, every step) paired by
seed over the seeds of a mix (95% t-interval), the pooled paired bootstrap over test samples of the seeds' runs,
and the run's own one-adapter and random-groups accuracies for context.

A lever becomes a default only when it is better on the design mix (the decoder mix) and confirmed on a second mix
it was not chosen on (the encoder mixes here).

    python benchmarks/ensemble_levers.py
    python benchmarks/ensemble_levers.py --mix mine=/abs/path/runs/seed*   # any finished run folders (or globs under runs/)
    python benchmarks/ensemble_levers.py --quick    # trains one tiny-bert run first (~2 min; not a result)

Writes ``benchmarks/results/ensemble_levers[_quick].{json,md,png}``. Seconds of CPU: it refits weights only.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RESULTS, RUNS, machine_info, paired_stats, save_figure, write_results  # noqa: E402,I001
from elora_ray.artifacts import read_prepared  # noqa: E402
from elora_ray.config import load_config  # noqa: E402
from elora_ray.ensemble.members import group_outputs, load_members, load_weights  # noqa: E402
from elora_ray.ensemble.shrinkage import shrunk_weights  # noqa: E402
from elora_ray.ensemble.stage import weight_matrix  # noqa: E402
from elora_ray.ensemble.weights import combine, fit_task_weights  # noqa: E402
from elora_ray.evaluate.uncertainty import correctness  # noqa: E402

MIXES = {
    "decoder_glue_smollm2": "ensemble_decoder_glue_smollm2/seed[0-9]",  # not the seed<k>_affinity_<kind> variants
    "decoder_glue_smollm2_qlora": "ensemble_decoder_glue_smollm2_qlora/seed[0-9]",
    "embedded_10": "add_task/embedded_seed*/full",
    "planted_21": "add_task/planted21_seed*/full",
}
DESIGN_MIX = "decoder_glue_smollm2"
WEIGHTS = ("learned", "shrunk", "uniform", "own_group")
BOOST = ("every step", "drop val-raising")
DEFAULT = ("learned", "every step")
QUICK_SETS = ["model.name_or_path=tiny-bert", "suite.samples_per_task=60", "suite.tasks_per_group=[2,2]", "featurize.dim=32",
              "featurize.shard_size=16", "train.epochs=2", "train.lr=3e-3", "train.batch_size=8", "boost.steps=2",
              "evaluate.batch_size=32", "baselines.methods=[single_adapter,random_groups]"]


def finished(run: Path) -> bool:
    return all((run / p).is_file() for p in ("ensemble/members.json", "ensemble/weights.json", "evaluation.json"))


def drop_val_raising(run: Path, members):
    """A copy of ``members`` with coefficient 0 for every learner whose step raised its group's validation loss."""
    steps_path = run / "boost" / "steps.json"
    steps = json.loads(steps_path.read_text())["steps"] if steps_path.is_file() else []
    raised = {s["job"] for s in steps if s.get("validation_loss_with_learner", s["validation_loss_after"]) > s["validation_loss_before"]}
    out = copy.deepcopy(members)
    for g in out.groups:
        for lr in g.learners:
            if lr.job_id in raised:
                lr.coef = 0.0
    return out, sorted(raised)


def task_alpha(kind: str, logits, labels, own: int, m: int, cfg, name: str) -> tuple[np.ndarray, float | None]:
    if kind == "learned":
        return fit_task_weights(logits, labels, own, cfg.ensemble.shrink, cfg.ensemble.solver), None
    if kind == "shrunk":
        fit = shrunk_weights(logits, labels, own, cfg.ensemble.shrink, cfg.ensemble.solver, folds=cfg.ensemble.cv_folds,
                             seed=zlib.crc32(name.encode()))
        return fit.weights, fit.shrinkage
    if kind == "uniform":
        return np.full(m, 1.0 / m), None
    return np.eye(m)[own], None


def measure_run(run: Path) -> dict:
    cfg = load_config(run / "config.yaml")
    tasks = read_prepared(run)
    names = [t.name for t in tasks]
    num_labels = {t.name: len(t.labels) for t in tasks}
    members = load_members(run)
    evaluation = json.loads((run / "evaluation.json").read_text())
    split = evaluation.get("split", "test")
    m = len(members.groups)
    variants, correct, raised = {}, {}, []
    for boost in BOOST:
        mem = members
        if boost == "drop val-raising":
            mem, raised = drop_val_raising(run, members)
        val = [group_outputs(run, mem, j, "validation", names, num_labels) for j in range(m)]
        test = [group_outputs(run, mem, j, split, names, num_labels) for j in range(m)]
        for kind in WEIGHTS:
            weights, lams = {}, []
            if (kind, boost) == DEFAULT and cfg.ensemble.weights == "learned":
                # the run's own weights.json: a refit agrees to 6 decimals, but a weight of 1e-9 instead of 0 breaks
                # the exact ties of bf16-rounded logits (runs before class logits were fp32) the other way
                weights = weight_matrix(load_weights(run))
            for name in names if not weights else []:
                own = mem.group_of(name)
                ids = val[own][name].sample_ids
                logits = [v[name].align_to(ids).logits for v in val]
                alpha, lam = task_alpha(kind, logits, val[own][name].labels, own, m, cfg, name)
                weights[name] = list(alpha)
                if lam is not None:
                    lams.append(lam)
            ok = correctness(combine(test, weights))
            correct[(kind, boost)] = ok
            variants[f"{kind} | {boost}"] = {
                "weights": kind, "boost": boost, "avg_accuracy": float(np.mean([v.mean() for v in ok.values()])),
                **({"mean_shrinkage": float(np.mean(lams))} if lams else {}),
            }
    methods = evaluation.get("methods", {})
    context = {k: methods[k]["avg_accuracy"] for k in ("ensemble", "single_adapter", "random_groups") if k in methods}
    base = correct[DEFAULT]
    for key, v in variants.items():
        kind, boost = key.split(" | ")
        v["minus_default"] = v["avg_accuracy"] - variants[" | ".join(DEFAULT)]["avg_accuracy"]
        v["per_task_minus_default"] = {t: float(correct[(kind, boost)][t].mean() - base[t].mean()) for t in base}
    return {"run": str(run), "groups": [g.tasks for g in members.groups], "boost_steps_raising_validation": raised,
            "early_stopping_headroom": early_stopping_headroom(run, members),
            "early_stopping_ties": early_stopping_ties(run, cfg.train.early_stopping_metric, cfg.train.early_stopping_ties),
            "exact_logit_ties": exact_logit_ties(run, split),
            "boost_steps": members.boosting_steps, "variants": variants, "context": context,
            "reported_ensemble_matches": abs(context.get("ensemble", np.nan) - variants["learned | every step"]["avg_accuracy"]) < 1e-9
            if cfg.ensemble.weights == "learned" else None,
            "_correct": {f"{k} | {b}": {t: v.tolist() for t, v in c.items()} for (k, b), c in correct.items()}}


def early_stopping_headroom(run: Path, members) -> list[dict]:
    """Per task of every multi-task group adapter: its validation accuracy at the step the group stopped at
    (the group's best check) and at the task's own best check, from the job record's per-check figures. The
    difference bounds what per-task early stopping could gain on validation (an optimistic bound: the same
    samples pick the check and score it)."""
    from elora_ray.layout import RunLayout

    rows = []
    for g in members.groups:
        if len(g.tasks) < 2:
            continue
        path = RunLayout(run).job_record(g.base)
        if not path.is_file():
            continue
        metrics = json.loads(path.read_text())["metrics"]
        evals = [e for e in metrics.get("evals", []) if "per_task" in e]
        chosen = [e for e in evals if e.get("step") == metrics.get("best_step")]
        if not evals or not chosen:
            continue
        at = chosen[0]["per_task"]
        for task in g.tasks:
            series = [(e["per_task"][task]["accuracy"], e["step"]) for e in evals if task in e["per_task"]]
            best_acc, best_step = max(series, key=lambda x: (x[0], -x[1]))
            rows.append({"group": g.base, "task": task, "group_best_step": int(metrics["best_step"]),
                         "task_best_step": int(best_step), "accuracy_at_group_step": at[task]["accuracy"],
                         "accuracy_at_task_best": best_acc, "headroom": best_acc - at[task]["accuracy"],
                         "later_accuracies": [a for a, step in series if step > metrics["best_step"]]})
    return rows


def early_stopping_ties(run: Path, metric: str, rule: str = "earliest") -> dict:
    """Every adapter job of the run with per-check validation figures: does a check after the kept one have the same
    early-stopping ``metric`` (within 1e-9) and a lower validation loss? ``kept_start``: those that kept step 0."""
    from elora_ray.layout import RunLayout

    jobs, tied, kept_start = 0, [], []
    for path in sorted(RunLayout(run).job_records.glob("*.json")):
        metrics = json.loads(path.read_text()).get("metrics", {})
        evals = [e for e in metrics.get("evals", []) if metric in e and "loss" in e]
        kept = [e for e in evals if e.get("step") == metrics.get("best_step")]
        if len(evals) < 2 or not kept:
            continue
        jobs += 1
        k = kept[0]
        if any(e["step"] > k["step"] and abs(e[metric] - k[metric]) <= 1e-9 and e["loss"] < k["loss"] for e in evals):
            tied.append(path.stem)
            if k["step"] == 0:
                kept_start.append(path.stem)
    return {"metric": metric, "rule": rule, "jobs": jobs, "tied": tied, "kept_start": kept_start}


def exact_logit_ties(run: Path, split: str) -> dict:
    """Test predictions (every stored output of the run) whose top class logit equals another class logit exactly."""
    import pyarrow.parquet as pq
    from elora_ray.layout import RunLayout

    rows = tied = 0
    for path in sorted(RunLayout(run).output("x").parent.glob("*.parquet")):
        table = pq.read_table(path, columns=["split", "logits"]).to_pydict()
        for sp, logits in zip(table["split"], table["logits"]):
            if sp != split or len(logits) < 2:
                continue
            z = np.asarray(logits, dtype=np.float64)
            rows += 1
            tied += int(np.sum(z == z.max()) > 1)
    return {"rows": rows, "tied": tied}


def pooled_bootstrap(runs: list[dict], key: str, resamples: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile interval of (variant − default) average accuracy, averaged over the runs, resampling each
    task's test samples of each run (paired: the same draw for both)."""
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    default = " | ".join(DEFAULT)
    for r in runs:
        a, b = r["_correct"][key], r["_correct"][default]
        per_task = []
        for t in a:
            d = np.asarray(a[t]) - np.asarray(b[t])
            idx = rng.integers(0, len(d), (resamples, len(d)))
            per_task.append(d[idx].mean(1))
        total += np.mean(per_task, axis=0)
    total /= len(runs)
    return [float(np.percentile(total, 2.5)), float(np.percentile(total, 97.5))]


def summarize_mix(runs: list[dict]) -> dict:
    out = {}
    for key in runs[0]["variants"]:
        diffs = [r["variants"][key]["minus_default"] for r in runs]
        row = {"avg_accuracy": float(np.mean([r["variants"][key]["avg_accuracy"] for r in runs])),
               "minus_default": paired_stats(diffs), "bootstrap95": pooled_bootstrap(runs, key)}
        for ctx in ("single_adapter", "random_groups"):
            if all(ctx in r["context"] for r in runs):
                row[f"minus_{ctx}"] = paired_stats([r["variants"][key]["avg_accuracy"] - r["context"][ctx] for r in runs])
        lams = [r["variants"][key]["mean_shrinkage"] for r in runs if "mean_shrinkage" in r["variants"][key]]
        if lams:
            row["mean_shrinkage"] = float(np.mean(lams))
        out[key] = row
    return out


def _fmt(p: dict | None, scale: float = 100.0) -> str:
    if p is None:
        return "–"
    s = f"{scale * p['mean']:+.2f}"
    if p.get("ci95"):
        s += f" [{scale * p['ci95'][0]:+.2f}, {scale * p['ci95'][1]:+.2f}]"
    return s


def render(result: dict) -> str:
    lines = ["# Ensemble levers: combination weights and boosting steps, refit on finished runs", "",
             "Test accuracy (points) of each way of combining the same trained adapters; differences to the default "
             "(learned weights, every boosting step) are paired by seed (95% t-interval over seeds; `–`: one seed) and "
             "by test sample (pooled bootstrap). One adapter and random groups are the runs' own baselines.", ""]
    for mix, info in result["mixes"].items():
        lines += [f"## {mix}{' (design mix)' if mix == DESIGN_MIX else ''}: {info['seeds']} seed(s)", ""]
        if not info["seeds"]:
            lines += [f"No finished run folder matched `{info['pattern']}` yet.", ""]
            continue
        lines += ["| weights | boosting | avg accuracy | − default, by seed | − default, bootstrap 95% | − one adapter | − random groups | mean shrinkage λ |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for key, row in info["summary"].items():
            w, b = key.split(" | ")
            bs = row["bootstrap95"]
            lam = f"{row['mean_shrinkage']:.2f}" if "mean_shrinkage" in row else "–"
            lines.append(f"| {w} | {b} | {100 * row['avg_accuracy']:.2f} | {_fmt(row['minus_default'])} | "
                         f"[{100 * bs[0]:+.2f}, {100 * bs[1]:+.2f}] | {_fmt(row.get('minus_single_adapter'))} | "
                         f"{_fmt(row.get('minus_random_groups'))} | {lam} |")
        head = [h for r in info["runs"] for h in r["early_stopping_headroom"]]
        if head:
            gain = np.array([h["headroom"] for h in head])
            moved = sum(h["task_best_step"] != h["group_best_step"] for h in head)
            lines += ["", f"Per-task early stopping, headroom on validation (tasks of multi-task group adapters, all seeds): "
                      f"{moved} of {len(head)} tasks peaked at another check than their group stopped at; stopping each "
                      f"at its own best check would raise its validation accuracy by {100 * gain.mean():.2f} points on "
                      f"average (max {100 * gain.max():.2f}) — an optimistic bound (the same samples pick and score)."]
        start = [h for h in head if h["group_best_step"] == 0 and h["later_accuracies"]]
        if start:
            lines += ["", "Multi-task group adapters that kept the untrained start θ*, each task's validation accuracy "
                      "there and its range over the later checks: " + "; ".join(
                          f"{h['group']} {h['task']} {h['accuracy_at_group_step']:.2f} "
                          f"({min(h['later_accuracies']):.2f}–{max(h['later_accuracies']):.2f})" for h in start) + "."]
        ties = [r["early_stopping_ties"] for r in info["runs"]]
        jobs, tied, start = (sum(t["jobs"] for t in ties), sum(len(t["tied"]) for t in ties),
                             sum(len(t["kept_start"]) for t in ties))
        lines += ["", f"Early-stopping ties (`train.early_stopping_ties: {'/'.join(sorted({t['rule'] for t in ties}))}`, metric `{ties[0]['metric']}`): in {tied} of "
                  f"{jobs} adapter jobs a later check had the same metric and a lower validation loss; {start} of those "
                  f"kept the untrained start θ*."]
        lt = [r["exact_logit_ties"] for r in info["runs"]]
        rows, tl = sum(t["rows"] for t in lt), sum(t["tied"] for t in lt)
        if rows:
            lines += ["", f"Exact ties in the stored class logits: {tl} of {rows} test predictions "
                      f"({100 * tl / rows:.2f}%) over every job's outputs."]
        raised = sum(len(r["boost_steps_raising_validation"]) for r in info["runs"])
        steps = sum(r["boost_steps"] for r in info["runs"])
        lines += ["", f"Boosting steps that raised their group's validation loss: {raised} of {steps}.",
                  "Runs: " + ", ".join(f"`{Path(r['run']).relative_to(RUNS) if Path(r['run']).is_relative_to(RUNS) else r['run']}`"
                                       for r in info["runs"]), ""]
    m = result["machine"]
    lines += [f"Machine: {m['cpu']} ({m['cores']} cores), {m['date']}. Command: `python benchmarks/{result['command']}`."]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixes = [k for k, v in result["mixes"].items() if v["seeds"]]
    if not mixes:
        return
    fig, axes = plt.subplots(1, len(mixes), figsize=(5.5 * len(mixes), 3.8), squeeze=False, sharey=True)
    for ax, mix in zip(axes[0], mixes):
        rows = result["mixes"][mix]["summary"]
        keys = [k for k in rows if k != " | ".join(DEFAULT)]
        y = np.arange(len(keys))
        mean = [100 * rows[k]["minus_default"]["mean"] for k in keys]
        lo = [100 * rows[k]["bootstrap95"][0] for k in keys]
        hi = [100 * rows[k]["bootstrap95"][1] for k in keys]
        ax.errorbar(mean, y, xerr=[np.subtract(mean, lo), np.subtract(hi, mean)], fmt="o", capsize=3)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(y, keys)
        ax.set_title(f"{mix} ({result['mixes'][mix]['seeds']} seeds)")
        ax.set_xlabel("test accuracy − default (points; bootstrap 95%)")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mix", action="append", default=[], metavar="NAME=GLOB",
                    help="a mix and its run folders (a glob under benchmarks/runs or an absolute one); replaces the defaults")
    ap.add_argument("--quick", action="store_true", help="train one tiny-bert run and measure it (a smoke test)")
    args = ap.parse_args(argv)
    mixes = dict(s.split("=", 1) for s in args.mix) if args.mix else dict(MIXES)
    name = "ensemble_levers"
    if args.quick:
        from elora_ray import run_pipeline

        folder = RUNS / "ensemble_levers_quick" / "seed0"
        run_pipeline(load_config(None, QUICK_SETS), folder)
        mixes, name = {"quick": str(folder.relative_to(RUNS))}, "ensemble_levers_quick"
    result = {"mixes": {}, "machine": machine_info(),
              "command": "ensemble_levers.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    for mix, pattern in mixes.items():
        folders = sorted(Path("/").glob(pattern.lstrip("/")) if pattern.startswith("/") else RUNS.glob(pattern))
        runs = []
        for run in folders:
            if finished(run):
                print(f"{mix}: {run}", flush=True)
                runs.append(measure_run(run))
        result["mixes"][mix] = {"pattern": pattern, "seeds": len(runs), "runs": runs,
                                "summary": summarize_mix(runs) if runs else {}}
    text = render(result)
    for info in result["mixes"].values():
        for r in info["runs"]:
            r.pop("_correct")
    write_results(name, result, text)
    plot(result, RESULTS / f"{name}.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
