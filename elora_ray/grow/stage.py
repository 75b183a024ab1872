"""``elora add-task`` / ``elora remove-task``: grow a finished run's ensemble by its task list only.

Steps (each recorded in ``grow/state.json`` of the work copy, so a killed grow resumes at the step it
was in):

1. data      — the added tasks' samples; the kept tasks' samples must read back identical;
2. features  — the added tasks probed (encoders) and featurised alone with the run's projection;
3. affinity  — the estimate stage on every task's features (seconds; the first-order affinity's
               kept entries do not change);
4. groups    — each added task placed by :mod:`.place` (nearest group, or a group of its own); a
               removed task leaves its group; the other groups stay as they were;
5. adapters  — every kept adapter re-indexed to the grown task list (:func:`.data.retask_adapter`);
6. train     — only the groups whose tasks changed are retrained, warm-started from their adapter
               (a new group starts at θ*);
7. outputs   — the kept adapters' (and θ*'s) logits on the added tasks (:mod:`.outputs`);
8. boost     — as many boosting steps on each retrained group as it had (its old learners fit the
               old adapter's residuals);
9. weights   — combination weights refitted for the tasks whose inputs changed: added tasks, and
               tasks that gave a changed or dropped group a non-zero weight; the rest keep theirs;
10. evaluate — ``evaluation.json`` for the grown ensemble (the baselines were trained for the old
               task list: their plans move to ``baselines/plans.before-grow.json``).

The run is grown in a work copy beside it (``.<name>.grow``: large files hard-linked, every write
replaces a file, so the original is never touched) and swapped in when every step is done; with
``--out`` the copy becomes that directory and the original stays as it was. ``grow/history.json``
says, for every grow, what was added, removed, placed where and recomputed, and how long each step
took; ``grow/report.md`` shows the last one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..artifacts import read_affinity, read_prepared
from ..config import RunConfig
from ..errors import ConfigError
from ..io import fingerprint, write_json, write_text
from ..layout import BOOST_DIR, GROW_DIR, RunLayout
from .change import TaskChange, require_finished, task_change
from .place import place_tasks

log = logging.getLogger(__name__)
LINK_SUFFIXES = (".parquet", ".safetensors", ".bin", ".pt", ".npy")
STEPS = ("data", "features", "affinity", "groups", "adapters", "train", "outputs", "boost", "weights", "evaluate")


def grow_run(run: str | Path, new_cfg: RunConfig, out: str | Path | None = None, progress: bool = True) -> dict:
    """Grow ``run`` to ``new_cfg``'s tasks (in place, or into ``out``); returns this grow's record."""
    run = Path(run).absolute()
    require_finished(run)
    change = task_change(run, new_cfg)  # every refusal comes before anything is written
    from .data import load_checked

    load_checked(change, run)
    target = Path(out).absolute() if out is not None else run
    if out is not None and target.exists():
        raise ConfigError(f"{target} exists: give a new directory for the grown run (or leave --out off to grow {run} in place)")
    work = target.parent / f".{target.name}.grow"
    state_path = work / GROW_DIR / "state.json"
    key = {"source": str(run), "added": change.added, "removed": change.removed, "tasks": change.new_names}
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    if state is None or state.get("change") != key:
        if work.exists():
            shutil.rmtree(work)
        link_copy(run, work)
        state = {"change": key, "done": [], "seconds": {}}
        write_json(state_path, state)
    else:
        log.info("grow: resuming in %s after step(s) %s", work, ", ".join(state["done"]) or "none")
    history = _history(work)
    gen = len(history) + 1
    ctx: dict = {"gen": gen, "progress": progress}
    results = state.setdefault("results", {})
    for step in STEPS:
        if step in state["done"]:
            ctx[step] = results[step]
            continue
        t0 = time.perf_counter()
        ctx[step] = STEP_FUNCTIONS[step](change, work, run, ctx)
        state["done"].append(step)
        state["seconds"][step] = round(time.perf_counter() - t0, 2)
        results[step] = ctx[step]
        write_json(state_path, state)
    record = {
        "generation": gen, "source": str(run), "added": change.added, "removed": change.removed, "tasks": change.new_names,
        "placements": ctx["groups"]["placements"], "groups_before": ctx["groups"]["before"], "groups": ctx["groups"]["groups"],
        "changed_groups": ctx["groups"]["changed"], "retrained": ctx["train"]["jobs"] + ctx["boost"]["jobs"],
        "boosting_steps_dropped": ctx["boost"]["boosting_steps_dropped"], "outputs_extended": ctx["outputs"],
        "weights_refit": ctx["weights"]["refit"], "weights_kept": ctx["weights"]["kept"],
        "step_seconds": state["seconds"], "seconds": round(sum(state["seconds"].values()), 2),
        "evaluation": {"avg_accuracy": ctx["evaluate"]["methods"]["ensemble"]["avg_accuracy"],
                       "per_task": ctx["evaluate"]["methods"]["ensemble"]["per_task"], "split": ctx["evaluate"]["split"]},
    }
    write_json(work / GROW_DIR / "history.json", {"grows": [*history, record]})
    from .report import render_grow_report

    write_text(work / GROW_DIR / "report.md", render_grow_report(record))
    state_path.unlink()
    _swap_in(work, target, run if out is None else None)
    log.info("grow: done in %.1f s; %s", record["seconds"], target / GROW_DIR / "report.md")
    return record


def link_copy(src: Path, dst: Path) -> None:
    """Copy a run directory: large immutable files (parquet, safetensors) hard-linked, the rest copied.
    Every stage replaces files rather than writing into them, so the source never changes."""
    def copy(s: str, d: str) -> str:
        if s.endswith(LINK_SUFFIXES):
            try:
                os.link(s, d)
                return d
            except OSError:  # another file system: copy
                pass
        return shutil.copy2(s, d)

    tmp = dst.with_name(dst.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=copy, ignore=shutil.ignore_patterns("tensorboard", ".*.grow"))
    os.replace(tmp, dst)


def _swap_in(work: Path, target: Path, original: Path | None) -> None:
    if original is None:
        os.replace(work, target)
        return
    old = original.with_name(f".{original.name}.before-grow")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(original, old)
    os.replace(work, original)
    shutil.rmtree(old, ignore_errors=True)


def _history(run: Path) -> list[dict]:
    path = run / GROW_DIR / "history.json"
    return json.loads(path.read_text())["grows"] if path.is_file() else []


# --- the steps -------------------------------------------------------------------------------

def _data(change: TaskChange, work: Path, src: Path, ctx: dict) -> dict:
    from .data import prepare_change

    return {"tasks": len(prepare_change(change, work)["tasks"])}


def _features(change: TaskChange, work: Path, src: Path, ctx: dict) -> dict:
    from .data import featurize_added, regrow_heads

    regrow_heads(change, work, ctx["progress"])
    m = featurize_added(change, work, ctx["progress"])
    return {"samples": m["samples"], "seconds": m["seconds"]}


def _affinity(change: TaskChange, work: Path, src: Path, ctx: dict) -> dict:
    from ..estimate.stage import estimate

    return estimate(change.cfg, work, force=True, progress=ctx["progress"])


def _groups(change: TaskChange, work: Path, src: Path, ctx: dict) -> dict:
    """Place the added tasks (idempotent: recomputed on resume from the source run's groups)."""
    from ..ensemble.members import load_members

    before = [list(g.tasks) for g in load_members(src).groups]
    kept = [[t for t in g if t not in change.removed] for g in before]
    names, A = read_affinity(work)
    groups, placements = place_tasks(A, names, [g for g in kept if g], change.added,
                                     fixed_m=change.cfg.cluster.num_groups != "auto")
    # index[j]: old group j's index now (None: every task removed); groups past the kept ones are new
    index: list[int | None] = []
    k = 0
    for g in kept:
        index.append(k if g else None)
        k += bool(g)
    changed = sorted({k2 for j, k2 in enumerate(index) if k2 is not None and set(groups[k2]) != set(before[j])}
                     | set(range(k, len(groups))))
    path = RunLayout(work).groups
    old = json.loads(path.read_text())
    data = {"groups": groups, "m": len(groups), "method": "grown", "fingerprint": fingerprint([groups, names]),
            "placements": [p.to_dict() for p in placements], "before_grow": {k3: old.get(k3) for k3 in ("groups", "m", "method", "planted_ari")}}
    write_json(path, data)
    for p in placements:
        log.info("grow: %s → %s (%s)", p.task, f"group {p.group}" + (" (new)" if p.new_group else f" {groups[p.group]}"), p.rule)
    return {"groups": groups, "before": before, "index": index, "changed": changed, "placements": data["placements"]}


def _adapters(change: TaskChange, work: Path, src: Path, ctx: dict) -> dict:
    from safetensors.torch import load_file

    from ..ensemble.members import load_members
    from .data import retask_adapter

    layout = RunLayout(work)
    specs = [{"name": t.name, "labels": list(t.labels), "verbalizer": t.verbalizer} for t in read_prepared(work)]
    added = {}
    if layout.heads.is_file() and change.added:
        heads = load_file(str(layout.heads))
        added = {n: (heads[f"{i}.weight"], heads[f"{i}.bias"]) for i, n in enumerate(change.new_names) if n in change.added}
    members = load_members(src)
    ids = list(dict.fromkeys([*members.job_ids, members.reference]))
    for job in ids:
        if layout.adapter(job).is_dir():
            retask_adapter(layout.adapter(job), change, added, specs)
    return {"adapters": ids}


def _train(change: TaskChange, work: Path, src: Path, ctx: dict) -> dict:
    from ..ensemble.members import EnsembleMembers, GroupMembers, load_members, save_members
    from ..train.jobs import AdapterJob
    from ..train.runner import run_jobs
    from ..train.stage import in_task_order, output_splits, train_seed

    g = ctx["groups"]
    names = change.new_names
    old = load_members(src)
    back = {k: j for j, k in enumerate(g["index"]) if k is not None}  # new index → old group
    sizes = {t.name: len(t.splits.get("train", [])) for t in read_prepared(work)}
    jobs = []
    for k in g["changed"]:
        tasks = in_task_order(g["groups"][k], names)
        warm = old.groups[back[k]].base if k in back else None
        jobs.append(AdapterJob(id=f"group-{k}-grow{ctx['gen']}", method="ensemble", tasks=tasks,
                               output_tasks=output_splits(names, tasks), seed=train_seed(change.cfg), init_from=warm,
                               train_samples=replay_caps(change.cfg.grow.replay, tasks, change.added, sizes) if warm else None))
    records = run_jobs(widened(change.cfg, len(jobs)), work, jobs, desc="grow: retrain changed groups",
                       progress=ctx["progress"]) if jobs else {}
    new_base = {k: job.id for k, job in zip(g["changed"], jobs)}
    groups = []
    for k, tasks in enumerate(g["groups"]):
        if k in new_base:
            groups.append(GroupMembers(in_task_order(tasks, names), new_base[k]))
        else:
            kept = old.groups[back[k]]
            groups.append(GroupMembers(in_task_order(tasks, names), kept.base, list(kept.learners)))
    members = EnsembleMembers(groups, old.reference, fingerprint([old.fingerprint, [j.id for j in jobs]]))
    save_members(work, members)
    return {"jobs": [j.id for j in jobs], "seconds": {j: records[j]["wall_s"] for j in records}}


def widened(cfg: RunConfig, jobs: int) -> RunConfig:
    """A grow retrains one group or a few, where a full run fills every CPU with group jobs: on CPUs in
    local mode each of these jobs gets its share of the largest node's CPUs as threads (the adapter does
    not depend on it: ``train.cpus_per_worker`` is outside the job fingerprint)."""
    from ..raysession import ensure_ray, largest_node_cpus

    t = cfg.train
    if t.num_workers != 0 or t.use_gpu is True or jobs < 1:
        return cfg
    ensure_ray(cfg.ray)
    from ..raysession import cluster_gpus

    if t.use_gpu == "auto" and cluster_gpus() > 0:
        return cfg
    per = max(int(t.cpus_per_worker), largest_node_cpus() // jobs)
    return cfg if per == t.cpus_per_worker else cfg.model_copy(update={"train": t.model_copy(update={"cpus_per_worker": per})})


def replay_caps(replay: float | str, tasks: list[str], added: list[str], sizes: dict[str, int]) -> dict[str, int] | None:
    """``grow.replay``: each kept task of a retrained group trains on at most replay × (the group's added
    training samples) ÷ (its kept tasks) samples; None (every sample) for ``all`` or a group that only lost tasks."""
    new = sum(sizes[t] for t in tasks if t in added)
    kept = [t for t in tasks if t not in added]
    if replay == "all" or not new or not kept:
        return None
    per = max(1, int(np.ceil(float(replay) * new / len(kept))))
    return {t: per for t in kept if sizes[t] > per} or None


def _boost(change: TaskChange, work: Path, src: Path, ctx: dict) -> dict:
    """As many boosting steps on each retrained group as it had: its old learners fit the old adapter's
    residuals. A group whose tasks were all removed takes its steps with it."""
    from ..boost.stage import boost_group
    from ..ensemble.members import load_members, save_members

    g = ctx["groups"]
    names = change.new_names
    old = load_members(src)
    members = load_members(work)
    back = {k: j for j, k in enumerate(g["index"]) if k is not None}
    tasks = read_prepared(work)
    num_labels = {t.name: len(t.labels) for t in tasks}
    steps_path = work / BOOST_DIR / "steps.json"
    history = json.loads(steps_path.read_text())["steps"] if steps_path.is_file() else []
    redo = [(k, lr.step) for k in g["changed"] if k in back for lr in old.groups[back[k]].learners]
    gone = {lr.step for j, k in enumerate(g["index"]) if k is None for lr in old.groups[j].learners}
    history = [h for h in history if h["step"] not in {s for _, s in redo} | gone or h.get("grow") == ctx["gen"]]
    boosted = []
    for k, step in redo:
        if any(lr.step == step for lr in members.groups[k].learners):
            continue
        entry = boost_group(widened(change.cfg, 1), work, members, k, step, f"boost-{step}-grow{ctx['gen']}", names,
                            num_labels)
        history.append({**entry, "grow": ctx["gen"]})
        boosted.append(entry["job"])
        save_members(work, members)
        write_json(steps_path, {"steps": sorted(history, key=lambda h: h["step"])})
    return {"jobs": boosted, "boosting_steps_dropped": sorted(gone)}


def _outputs(change: TaskChange, work: Path, src: Path, ctx: dict) -> list[dict]:
    from ..ensemble.members import load_members
    from .outputs import extend_outputs

    members = load_members(work)
    retrained = set(ctx["train"]["jobs"]) if "train" in ctx else set()
    add_eval = {"validation": list(change.added), "test": list(change.added)}
    jobs = {j: add_eval for j in members.job_ids if j not in retrained}
    jobs[members.reference] = {"train": list(change.added), **add_eval}
    return extend_outputs(change.cfg, work, jobs, change.removed, ctx["progress"])


def _weights(change: TaskChange, work: Path, src: Path, ctx: dict) -> dict:
    from ..ensemble.members import group_outputs, load_members, load_weights, save_weights
    from ..ensemble.stage import task_weights

    members = load_members(work)
    old = load_weights(src)
    g = ctx["groups"]
    names = change.new_names
    num_labels = {t.name: len(t.labels) for t in read_prepared(work)}
    m = len(members.groups)
    e = change.cfg.ensemble
    dropped = [j for j, k in enumerate(g["index"]) if k is None]
    moved = set(g["changed"]) | {k for k in range(m) if k not in g["index"]}
    refit, kept, per_task = [], [], {}
    for name in names:
        prev = old["tasks"].get(name)
        if prev is not None:
            w = np.zeros(m)
            for j, k in enumerate(g["index"]):
                if k is not None:
                    w[k] = prev["weights"][j]
            touches = any(w[k] != 0 for k in moved if k < m) or any(prev["weights"][j] != 0 for j in dropped)
            uniform_shift = e.weights == "uniform" and m != len(prev["weights"])
            if not touches and not uniform_shift and members.group_of(name) == g["index"][prev["own_group"]]:
                per_task[name] = {**prev, "own_group": members.group_of(name), "weights": [round(float(a), 6) for a in w]}
                kept.append(name)
                continue
        refit.append(name)
    if refit:
        val = [group_outputs(work, members, j, "validation", refit, num_labels) for j in range(m)]
        for name in refit:
            per_task[name] = task_weights(e, val, name, members.group_of(name))
    fp = fingerprint([members.to_dict(), e.model_dump(mode="json")])
    save_weights(work, {"method": e.weights, "fingerprint": fp, "groups": [gm.tasks for gm in members.groups],
                        "tasks": {n: per_task[n] for n in names}})
    log.info("grow: combination weights refitted for %d task(s) (%s), kept for %d", len(refit), ", ".join(refit), len(kept))
    return {"refit": refit, "kept": kept}


def _evaluate(change: TaskChange, work: Path, src: Path, ctx: dict) -> dict:
    from ..evaluate.stage import evaluate_stage

    layout = RunLayout(work)
    if layout.baseline_plans.is_file():  # trained for the old task list
        os.replace(layout.baseline_plans, layout.baseline_plans.with_name("plans.before-grow.json"))
    for path in (layout.report_json, layout.report_md):
        if path.is_file():
            os.replace(path, work / GROW_DIR / f"{path.stem}.before-grow{path.suffix}")
    return evaluate_stage(change.cfg, work, force=True)


STEP_FUNCTIONS = {"data": _data, "features": _features, "affinity": _affinity, "groups": _groups, "adapters": _adapters,
                  "train": _train, "outputs": _outputs, "boost": _boost, "weights": _weights, "evaluate": _evaluate}
assert tuple(STEP_FUNCTIONS) == STEPS
