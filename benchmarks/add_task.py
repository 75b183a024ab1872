"""Adding a task to a trained run (``elora add-task``) against a full rerun on every task (issue 39).

For each suite and seed, one task is held out of the run: the run is trained on the others ("base"),
then the held-out task is added with ``elora add-task`` ("grown"); separately the whole pipeline
runs on every task ("full rerun"). Reported per seed:

- where the added task landed: the grown group, its source's other parts in it or not, and the
  group the full rerun gave it;
- time: the grow's wall time against the full rerun's (the issue's goal: ≤ 1/5), with each step's;
- accuracy: every task's test accuracy in the grown run and in the full rerun, the grown − full
  difference per task and on average with a paired 95% bootstrap interval over the test samples
  (same samples in both runs), next to θ* (no fine-tuning) and the most common label.

Suites: the embedded suite (``elora suite``: 10 tasks in 3 planted groups, MiniLM) and a 21-task
planted suite cut from real GLUE/SuperGLUE data (5 parts of SST-2, 5 of QNLI, 4 of CoLA, 4 of MRPC,
3 of BoolQ; ``elora_ray.tasks.planted``). The held-out task cycles through the sources with the seed.
Runs use the default settings, no baselines; every run is timed from scratch (a run folder left
by a killed benchmark is deleted, not resumed, so its time is a whole run's).

    python benchmarks/add_task.py                          # both suites, seeds 0 1 2 (~1 h here)
    python benchmarks/add_task.py --suites embedded --seeds 0
    python benchmarks/add_task.py --quick                  # tiny-bert, 4 embedded tasks (< 4 min; no figures)

Writes ``benchmarks/results/add_task[_quick].{json,md}``; finished (suite, seed) records are kept in the
json and skipped when rerun (``--rerun`` redoes them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from benchmarks.common import RESULTS, RUNS, machine_info, write_results  # noqa: E402,I001

PLANTED = {"glue/sst2": 5, "glue/qnli": 5, "glue/cola": 4, "glue/mrpc": 4, "superglue/boolq": 3}
PLANTED_SIZES = (120, 40, 80)
QUICK_SETS = ["model.name_or_path=tiny-bert", "featurize.dim=32", "featurize.shard_size=16", "train.epochs=2",
              "train.lr=3e-3", "train.batch_size=8", "boost.steps=1", "evaluate.batch_size=32"]
GOAL = 0.2
#: grow.replay variants measured on every case: every sample of the retrained group, and the kept tasks
#: replayed at the added task's size (the choice of the default rests on this comparison)
REPLAYS = ("all", 1.0)


def write_suite(suite: str, seed: int, folder: Path, data_root: Path, quick: bool) -> tuple[dict, dict[str, str]]:
    """(config dict with every task, task → source) for ``suite``, its files under ``folder``."""
    if suite == "embedded":
        from elora_ray.config import SuiteConfig
        from elora_ray.tasks.export import export_suite

        kw = {"samples_per_task": 48, "tasks_per_group": [3, 2]} if quick else {}
        path = export_suite(SuiteConfig(seed=seed, **kw), folder)
        cfg = yaml.safe_load(path.read_text())
        groups = json.loads((folder / "groups.json").read_text())["planted_groups"]
        return cfg, {t: f"source{g}" for g, grp in enumerate(groups) for t in grp}
    from elora_ray.tasks.planted import PartSizes, write_planted_suite

    tasks, truth = write_planted_suite(PLANTED, folder, data_root, sizes=PartSizes(*PLANTED_SIZES), seed=seed)
    return {"model": {"name_or_path": "default"}, "adapter": {"type": "lora", "rank": 4}, "tasks": tasks, "seed": seed}, truth


def stored_sources(data: Path, cfg: dict) -> dict[str, str]:
    """task → source of a suite written earlier (``source.json``; the embedded suite's ``groups.json``)."""
    if (data / "source.json").is_file():
        return json.loads((data / "source.json").read_text())
    groups = json.loads((data / "groups.json").read_text())["planted_groups"]
    return {t: f"source{g}" for g, grp in enumerate(groups) for t in grp}


def held_out(cfg: dict, source: dict[str, str], seed: int) -> str:
    """The last part of the seed's source (cycling over sources with at least three parts)."""
    sources = [s for s in dict.fromkeys(source.values()) if sum(v == s for v in source.values()) >= 3]
    pick = sources[seed % len(sources)]
    return [t["name"] for t in cfg["tasks"] if source[t["name"]] == pick][-1]


def timed_run(cfg, out: Path) -> tuple[dict, float]:
    from elora_ray.pipeline import run_pipeline

    shutil.rmtree(out, ignore_errors=True)  # a whole run's time, never a resumed part
    t0 = time.perf_counter()
    report = run_pipeline(cfg, out)
    return report, round(time.perf_counter() - t0, 1)


def compare(grown: Path, full: Path, seed: int) -> dict:
    """Per task and on average: grown − full test accuracy, paired bootstrap over the same test samples."""
    from elora_ray.artifacts import read_prepared
    from elora_ray.ensemble.members import group_outputs, load_members, load_weights
    from elora_ray.ensemble.stage import weight_matrix
    from elora_ray.ensemble.weights import combine
    from elora_ray.evaluate.uncertainty import bootstrap_difference, correctness, sample_units

    def ensemble(run: Path) -> dict:
        tasks = read_prepared(run)
        names, num_labels = [t.name for t in tasks], {t.name: len(t.labels) for t in tasks}
        members = load_members(run)
        outs = [group_outputs(run, members, j, "test", names, num_labels) for j in range(len(members.groups))]
        return correctness(combine(outs, weight_matrix(load_weights(run))))

    a, b = ensemble(grown), ensemble(full)
    units = sample_units(read_prepared(full), "test", {})  # none for these tasks: every sample is its own unit
    per_task = {t: {"grown": float(a[t].mean()), "full": float(b[t].mean()),
                    **bootstrap_difference({t: a[t]}, {t: b[t]}, seed=seed, units=units or None)} for t in sorted(a)}
    return {"average": bootstrap_difference(a, b, seed=seed, units=units or None), "per_task": per_task}


def run_case(suite: str, seed: int, root: Path, data_root: Path, quick: bool, stored: dict | None = None) -> dict:
    """One (suite, seed); ``stored``: its earlier record, whose base run and full rerun (and their times)
    are kept and only the grows are redone (``--regrow``, after a change to the grow)."""
    from elora_ray.config import load_config
    from elora_ray.ensemble.members import load_members
    from elora_ray.grow import grow_run

    folder = root / f"{suite}_seed{seed}"
    sets = ["baselines.methods=[]", *(QUICK_SETS if quick else [])]
    if stored is not None:
        full_cfg = yaml.safe_load((folder / "data" / "full.yaml").read_text())
        source = stored_sources(folder / "data", full_cfg)
        new = stored["added"]
        base_s, full_s = stored["seconds"]["base"], stored["seconds"]["full_rerun"]
        base_report = {"methods": {"ensemble": {"avg_accuracy": stored["base_avg_accuracy"]}}}
    else:
        full_cfg, source = write_suite(suite, seed, folder / "data", data_root, quick)
        (folder / "data" / "source.json").write_text(json.dumps(source))
        new = held_out(full_cfg, source, seed)
        for name, cfg in (("full.yaml", full_cfg),
                          ("base.yaml", dict(full_cfg, tasks=[t for t in full_cfg["tasks"] if t["name"] != new]))):
            (folder / "data" / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
        base_report, base_s = timed_run(load_config(folder / "data" / "base.yaml", sets), folder / "base")
        _, full_s = timed_run(load_config(folder / "data" / "full.yaml", sets), folder / "full")
    full = load_config(folder / "data" / "full.yaml", sets)
    record = {
        "suite": suite, "seed": seed, "tasks": len(full_cfg["tasks"]), "added": new, "source": source[new],
        "base_groups": [g.tasks for g in load_members(folder / "base").groups],
        "seconds": {"base": base_s, "full_rerun": full_s},
        "base_avg_accuracy": base_report["methods"]["ensemble"]["avg_accuracy"],
        "variants": {},
    }
    siblings = [t for t in source if source[t] == source[new] and t != new]
    full_group = next(g for g in load_members(folder / "full").groups if new in g.tasks).tasks
    record.update(full_rerun_group=full_group, full_rerun_with_a_sibling=bool(set(full_group) & set(siblings)))
    ev_full = json.loads((folder / "full" / "evaluation.json").read_text())
    record["theta_star"] = ev_full["ensemble_ablations"].get("theta_star", {}).get("per_task")
    record["majority"] = {t: v["accuracy"] for t, v in ev_full["majority"]["per_task"].items()}
    for replay in REPLAYS:
        out = folder / f"grown_replay_{replay}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out.parent / f".{out.name}.grow", ignore_errors=True)
        t0 = time.perf_counter()
        rec = grow_run(folder / "base", full.model_copy(update={"grow": full.grow.model_copy(update={"replay": replay})}), out,
                       progress=False)
        grow_s = round(time.perf_counter() - t0, 1)
        group = next(g for g in load_members(out).groups if new in g.tasks).tasks
        record["variants"][str(replay)] = {
            "grown_group": group, "new_group": rec["placements"][0]["new_group"], "placement": rec["placements"][0],
            "joined_own_source": bool(set(group) & set(siblings)) and not (set(group) - set(siblings) - {new}),
            "with_a_sibling": bool(set(group) & set(siblings)),
            "seconds": grow_s, "grow_steps": rec["step_seconds"], "time_ratio": round(grow_s / full_s, 3),
            "retrained": rec["retrained"], "weights_refit": len(rec["weights_refit"]), "weights_kept": len(rec["weights_kept"]),
            "accuracy": compare(out, folder / "full", seed),
        }
    return record


def pts(d: dict) -> str:
    """A bootstrap difference in points with its interval."""
    lo, hi = d["ci95"]
    return f"{100 * d['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def render(records: list[dict], quick: bool) -> str:
    lines = ["# Adding a task to a trained run vs a full rerun" + (" (quick: tiny model, not a result)" if quick else ""), "",
             "One task held out, the run trained on the rest, then `elora add-task` (grown) against `elora run` on every "
             "task (full rerun). `grow.replay`: `all` retrains the changed group on every sample; `1.0` replays the kept "
             "tasks at the added task's size. Time goal: grow ≤ 1/5 of the full rerun. Accuracy: ensemble test accuracy, "
             "grown − full, paired 95% bootstrap interval over the same test samples.", "",
             "| suite | seed | tasks | added | replay | grown group (same source?) | full rerun's group | grow s | full s | ratio | "
             "avg acc grown | avg acc full | grown − full [95%] | added task: grown / full |",
             "|---|---:|---:|---|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in records:
        for replay, v in r["variants"].items():
            a = v["accuracy"]
            t = a["per_task"][r["added"]]
            same = "yes" if v["joined_own_source"] else "with a sibling" if v["with_a_sibling"] else "no"
            lines.append(
                f"| {r['suite']} | {r['seed']} | {r['tasks']} | {r['added']} | {replay} | {', '.join(v['grown_group'])} ({same}"
                f"{', new group' if v['new_group'] else ''}) | {', '.join(r['full_rerun_group'])} | {v['seconds']:.0f} | "
                f"{r['seconds']['full_rerun']:.0f} | {v['time_ratio']:.2f} | "
                f"{np.mean([x['grown'] for x in a['per_task'].values()]):.3f} | {np.mean([x['full'] for x in a['per_task'].values()]):.3f} | "
                f"{pts(a['average'])} | {t['grown']:.3f} / {t['full']:.3f} |")
    lines += ["", "Per task (grown − full, points, 95% interval; θ* and most common label on the full run's test split):", ""]
    for r in records:
        for replay, v in r["variants"].items():
            lines += [f"**{r['suite']}, seed {r['seed']}, replay {replay}** (added {r['added']}; retrained {', '.join(v['retrained'])}; "
                      f"weights refit for {v['weights_refit']} task(s), kept for {v['weights_kept']}; grow steps: "
                      + ", ".join(f"{k} {s:.0f} s" for k, s in v["grow_steps"].items()) + ")", "",
                      "| task | grown | full | grown − full [95%] | θ* | most common label |", "|---|---:|---:|---|---:|---:|"]
            for name, x in v["accuracy"]["per_task"].items():
                th = (r["theta_star"] or {}).get(name, float("nan"))
                lines.append(f"| {name}{' (added)' if name == r['added'] else ''} | {x['grown']:.3f} | {x['full']:.3f} | {pts(x)} | "
                             f"{th:.3f} | {r['majority'].get(name, float('nan')):.3f} |")
            lines.append("")
    for replay in REPLAYS:
        vs = [r["variants"][str(replay)] for r in records if str(replay) in r["variants"]]
        if vs:
            ratios = [v["time_ratio"] for v in vs]
            diffs = [100 * v["accuracy"]["average"]["difference"] for v in vs]
            lines.append(f"- replay {replay}: time ratio grow / full rerun {min(ratios):.2f}–{max(ratios):.2f} (goal ≤ {GOAL}); "
                         f"average accuracy grown − full {min(diffs):+.1f} to {max(diffs):+.1f} points; the added task joined a "
                         f"group with its own source's parts in {sum(v['with_a_sibling'] for v in vs)} of {len(vs)} cases "
                         f"(the full rerun put it with them in {sum(r['full_rerun_with_a_sibling'] for r in records)}).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suites", nargs="+", default=["embedded", "planted21"], choices=["embedded", "planted21"])
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--quick: 0)")
    ap.add_argument("--data-root", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rerun", action="store_true")
    ap.add_argument("--regrow", action="store_true", help="keep each stored case's base run and full rerun; redo its grows")
    args = ap.parse_args(argv)
    suites = ["embedded"] if args.quick else args.suites
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    name = "add_task" + ("_quick" if args.quick else "")
    path = RESULTS / f"{name}.json"
    stored = json.loads(path.read_text())["records"] if path.is_file() and not args.rerun else []
    records = [r for r in stored if not (r["suite"] in suites and r["seed"] in seeds)] if args.rerun else list(stored)
    for suite in suites:
        for seed in seeds:
            have = next((r for r in records if r["suite"] == suite and r["seed"] == seed), None)
            if have is not None and not args.regrow:
                continue
            print(f"add_task: {suite} seed {seed}{' (grows again)' if have else ''}", flush=True)
            if have is not None:
                records.remove(have)
            records.append(run_case(suite, seed, RUNS / name, args.data_root, args.quick, have))
            records.sort(key=lambda r: (r["suite"], r["seed"]))
            write_results(name, {"records": records, "machine": machine_info(), "quick": args.quick}, render(records, args.quick))
    if not records:
        return 1
    write_results(name, {"records": records, "machine": machine_info(), "quick": args.quick}, render(records, args.quick))
    print(render(records, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
