"""The premise, measured (issue 38, item 2): how often does training one adapter on a subset of tasks help
each of its tasks, compared with the task's own adapter? The paper's positive-transfer experiment (§2.1,
Appendix B.6) on the decoder, for LoRA and QLoRA, over seeds.

For every seed and adapter type (``--adapters``, default LoRA and QLoRA) it fine-tunes, for real and under the
ensemble's protocol (same data, epochs, lr, batch size, early stopping on validation, seed), one adapter on
each single task, each subset of 2 and 3 tasks and all tasks (``--sizes``) of the config
(``benchmarks/configs/decoder_glue_smollm2.yaml``: SmolLM2-135M scoring label words on SST-2, CoLA, QNLI,
MRPC, 100 training samples each). Subset S transfers positively to task i ∈ S when the adapter trained on S
has a lower test loss on i than the adapter trained on {i} alone (the paper's f_i(S) < f_i({i}); test accuracy
and validation loss are reported too). The positive transfer rate of a list of subsets S_1..S_k is the paper's
(1/k) Σ_j |{i ∈ S_j : f_i(S_j) < f_i({i})}| / |S_j|, given per subset size next to the paper's figures
(Llama-3-8B, ten SuperGLUE tasks): all tasks in one adapter (k = 1) 40% for LoRA, 30% for QLoRA; all pairs
38% for LoRA, 26% for QLoRA. With few test samples a difference can be noise: the table also gives the
share of (i, S) whose transfer has the same sign in every seed, and each task's single-adapter spread over
seeds.

The adapters live in the ensemble benchmark's run folders (``runs/ensemble_<name>/seed<k>``, the same as
``benchmarks/decoder_ensemble.py`` and ``ensemble_accuracy.py`` use for the config): an adapter that is
already trained there on exactly S with the same type, seed and settings — the per-task adapters, the
single LoRA and QLoRA adapters, an ensemble or random group — is reused instead of trained again, and the
single-task and all-task adapters trained here carry the pipeline's own job ids, so the ensemble benchmark
reuses them. Every job is resumable (a finished adapter is skipped, a killed one resumes from its last
checkpoint), and ``benchmarks/results/positive_transfer_<name>.{json,md,png}`` is rewritten after every
adapter: a run stopped at any point keeps what finished, and the same command resumes it.

    python benchmarks/positive_transfer.py                        # the config above, seeds 0 1, LoRA and QLoRA
    python benchmarks/positive_transfer.py --seeds 2              # one more seed (the table takes all given)
    python benchmarks/positive_transfer.py --adapters lora --sizes 2 all
    python benchmarks/positive_transfer.py --quick                # tiny-llama smoke test (< 3 min; no figures)

Budget (2 cores; derivation in the config's comment). Four tasks give 4 singles, 6 pairs, 4 triples and the
all-task set: 32 task-sets of 100 training samples per (adapter type, seed), each costing
E·n·c_t + 5·v·c_f + (v+t)·c_f = 4·100·0.48 + 5·50·0.19 + 150·0.19 = 192 + 48 + 29 = ~270 core-s, plus ~20 s
start-up for each of the 15 adapters: ~8,900 core-s. LoRA and QLoRA over seeds 0 and 1: ~35,600 core-s, of
which ~20 of the 64 task-sets per seed pair are reused when the ensemble benchmark ran first (its per-task,
single, single-QLoRA and group adapters): ~25,000 core-s = ~3.5 h on the two cores, ~3.8 h with idle tails,
less with early stopping. Single-task adapters train first (every rate needs them), then the largest subsets.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RESULTS, RUNS, current_commit, machine_info, save_figure, write_results  # noqa: E402,I001
from benchmarks.decoder_ensemble import DEFAULT_CONFIG, QUICK, run_lock  # noqa: E402
from elora_ray import load_config  # noqa: E402
from elora_ray.adapter_types import adapter_type as adapter_info  # noqa: E402
from elora_ray.artifacts import read_data_manifest, read_job_record, read_prepared  # noqa: E402
from elora_ray.ensemble.outputs import accuracy, log_loss, read_outputs  # noqa: E402
from elora_ray.layout import THETA_STAR, RunLayout  # noqa: E402
from elora_ray.pipeline import run_stages  # noqa: E402
from elora_ray.train.jobs import AdapterJob, job_done  # noqa: E402
from elora_ray.train.runner import run_jobs  # noqa: E402
from elora_ray.train.stage import in_task_order, reference_job, train_seed  # noqa: E402

#: the paper's positive transfer rates (Llama-3-8B, ten SuperGLUE tasks, loss; Appendix B.6): S = all tasks
#: (k = 1) and all 45 pairs. §2.1 counts the pairs whose adapter was worse than the single-task one: LoRA
#: 27 of 45, QLoRA 33 of 45 (40% and 27% better).
PAPER = {"lora": {"all": 0.40, "2": 0.38}, "qlora": {"all": 0.30, "2": 0.26}}
SIZE_LABELS = {"2": "pairs", "3": "triples", "all": "all tasks"}


def size_key(subset: tuple[str, ...], n_tasks: int) -> str:
    return "all" if len(subset) == n_tasks else str(len(subset))


def subsets_of(names: list[str], sizes: list[str]) -> list[tuple[str, ...]]:
    """Single tasks first (every rate needs them), then the subsets of each size in ``sizes``, largest first."""
    wanted = {len(names) if s == "all" else int(s) for s in sizes}
    wanted = {k for k in wanted if 2 <= k <= len(names)}
    out = [(n,) for n in names]
    for k in sorted(wanted, reverse=True):
        out += list(itertools.combinations(names, k))
    return out


def _plain(job: AdapterJob) -> bool:
    return (job.kind == "trained" and job.loss == "ce" and job.init_from is None and job.epochs is None
            and job.lr is None and job.train_heads is None and job.targets is None)


def find_reusable(cfg, run: Path, data_fp: str) -> dict[tuple[str, frozenset], AdapterJob]:
    """Finished, current adapters in ``run`` trained from θ* under the plain protocol, keyed by (effective adapter
    type, task set): whatever method trained them (per-task, single, single QLoRA, an ensemble or random group)."""
    found: dict[tuple[str, frozenset], AdapterJob] = {}
    seed = train_seed(cfg)
    for path in sorted(RunLayout(run).job_records.glob("*.json")):
        rec = read_job_record(run, path.stem)
        if not rec or rec.get("kind") != "trained" or "job" not in rec:
            continue
        job = AdapterJob.from_dict(rec["job"])
        if not _plain(job) or job.seed != seed or not job.tasks:
            continue
        splits = job.output_tasks
        if not all(set(job.tasks) <= set(splits.get(s, [])) for s in ("validation", "test")):
            continue
        fp = job.fingerprint(cfg, data_fp)
        if rec.get("fingerprint") == fp and job_done(run, job, fp):
            found.setdefault((job.adapter_type or cfg.adapter.type, frozenset(job.tasks)), job)
    return found


def plan_jobs(cfg, run: Path, names: list[str], types: list[str], subsets: list[tuple[str, ...]]) -> list[dict]:
    """One entry per (adapter type, subset): the job that gives its adapter (reused or to train)."""
    data_fp = read_data_manifest(run)["fingerprint"]
    reusable = find_reusable(cfg, run, data_fp)
    seed = train_seed(cfg)
    base = cfg.adapter.type
    quantized = adapter_info(base).quantized_counterpart
    plans = []
    for kind in types:
        for subset in subsets:
            tasks = in_task_order(list(subset), names)
            splits = {"validation": list(tasks), "test": list(tasks)}
            job = reusable.get((kind, frozenset(tasks)))
            reused = job is not None
            if job is None:  # the pipeline's own ids where the pipeline trains the same adapter
                override = None if kind == base else kind
                if kind == base and len(tasks) == 1:
                    job = AdapterJob(id=f"task-{tasks[0]}", method="per_task_adapters", tasks=tasks, output_tasks=splits, seed=seed)
                elif kind == base and len(tasks) == len(names):
                    job = AdapterJob(id="single", method="single_adapter", tasks=tasks, output_tasks=splits, seed=seed)
                elif kind == quantized and len(tasks) == len(names):
                    job = AdapterJob(id=f"single-{kind}", method="single_qlora", tasks=tasks, output_tasks=splits,
                                     adapter_type=kind, seed=seed)
                else:
                    job = AdapterJob(id=f"transfer-{kind}-{'+'.join(tasks)}", method="positive_transfer", tasks=tasks,
                                     output_tasks=splits, adapter_type=override, seed=seed)
            plans.append({"type": kind, "subset": tasks, "job": job, "reused": reused,
                          "fingerprint": job.fingerprint(cfg, data_fp)})
    return plans


def job_metrics(run: Path, job_id: str, tasks: list[str]) -> dict[str, dict]:
    """Per task: validation and test loss and accuracy of one adapter's stored logits."""
    out: dict[str, dict] = {t: {} for t in tasks}
    for split, short in (("validation", "val"), ("test", "test")):
        for task, o in read_outputs(run, job_id, split, tasks).items():
            out[task][f"{short}_loss"] = log_loss({task: o})
            out[task][f"{short}_acc"] = accuracy(o)
    return out


def majority_accuracy(run: Path) -> dict[str, float]:
    """Test accuracy of always answering each task's most common training label."""
    res = {}
    for t in read_prepared(run):
        common = Counter(e.label for e in t.splits["train"]).most_common(1)[0][0]
        test = t.splits.get("test", [])
        res[t.name] = float(np.mean([e.label == common for e in test])) if test else float("nan")
    return res


def collect(seed_plans: dict[int, tuple[Path, list[dict], str]]) -> tuple[list[dict], dict]:
    """Rows (seed, type, subset, task, metrics) of every finished adapter whose record is current (its
    fingerprint is the planned one), and per-seed context (θ*'s zero-shot accuracy, the most common label)."""
    rows, context = [], {}
    for seed, (run, plans, theta_fp) in seed_plans.items():
        for p in plans:
            job = p["job"]
            rec = read_job_record(run, job.id)
            if rec is None or rec.get("fingerprint") != p["fingerprint"] or not RunLayout(run).output(job.id).is_file():
                continue
            m = rec.get("metrics", {})
            for task, vals in job_metrics(run, job.id, p["subset"]).items():
                rows.append({"seed": seed, "type": p["type"], "subset": list(p["subset"]), "size": len(p["subset"]),
                             "task": task, "job": job.id, "method": rec.get("method"), "reused": p["reused"],
                             "wall_s": rec.get("wall_s"), "train_flops": m.get("train_flops"), "steps": m.get("steps"),
                             "best_step": m.get("best_step"), **vals})
        theta = None
        rec = read_job_record(run, THETA_STAR)
        if rec is not None and rec.get("fingerprint") == theta_fp:
            names = list(dict.fromkeys(t for p in plans for t in p["subset"]))
            theta = job_metrics(run, THETA_STAR, names)
        context[seed] = {"theta_star": theta, "majority": majority_accuracy(run)}
    return rows, context


def transfers(rows: list[dict], n_tasks: int) -> list[dict]:
    """Each (seed, type, S, i) with |S| ≥ 2 against the same seed and type's single-task adapter of i."""
    single = {(r["seed"], r["type"], r["task"]): r for r in rows if r["size"] == 1}
    out = []
    for r in rows:
        ref = single.get((r["seed"], r["type"], r["task"]))
        if r["size"] < 2 or ref is None:
            continue
        out.append({"seed": r["seed"], "type": r["type"], "subset": r["subset"], "task": r["task"],
                    "size": size_key(tuple(r["subset"]), n_tasks),
                    "d_test_loss": r["test_loss"] - ref["test_loss"], "d_test_acc": r["test_acc"] - ref["test_acc"],
                    "d_val_loss": r["val_loss"] - ref["val_loss"],
                    "ref_kept_start": ref.get("best_step") == 0})
    return out


def rate(items: list[dict], positive) -> float:
    """The paper's rate: the mean over subsets of the share of their tasks with positive transfer."""
    by_subset: dict[tuple, list[bool]] = {}
    for t in items:
        by_subset.setdefault((t["seed"], t["type"], tuple(t["subset"])), []).append(bool(positive(t)))
    return float(np.mean([np.mean(v) for v in by_subset.values()])) if by_subset else float("nan")


def summarize(trans: list[dict], seeds: list[int], types: list[str]) -> list[dict]:
    """Per (adapter type, subset size): rates per seed and over seeds, seed-averaged and sign-consistent shares."""
    out = []
    for kind in types:
        for size in ("2", "3", "all"):
            items = [t for t in trans if t["type"] == kind and t["size"] == size]
            if not items:
                continue
            done_seeds = sorted({t["seed"] for t in items})
            per_seed = {s: rate([t for t in items if t["seed"] == s], lambda t: t["d_test_loss"] < 0) for s in done_seeds}
            keyed: dict[tuple, list[dict]] = {}
            for t in items:
                keyed.setdefault((tuple(t["subset"]), t["task"]), []).append(t)
            full = {k: v for k, v in keyed.items() if len(v) == len(done_seeds)}
            mean_items = [{"seed": -1, "type": kind, "subset": list(k[0]), "task": k[1],
                           "d_test_loss": float(np.mean([t["d_test_loss"] for t in v]))} for k, v in full.items()]
            consistent_pos = [all(t["d_test_loss"] < 0 for t in v) for v in full.values()]
            consistent_neg = [all(t["d_test_loss"] > 0 for t in v) for v in full.values()]
            out.append({
                "type": kind, "size": size, "seeds": done_seeds, "subsets": len({tuple(t["subset"]) for t in items}),
                "pairs_i_S": len(keyed),
                "rate_test_loss_per_seed": per_seed,
                "rate_test_loss": float(np.mean(list(per_seed.values()))),
                "rate_test_loss_seed_mean": rate(mean_items, lambda t: t["d_test_loss"] < 0),
                "rate_test_acc": rate(items, lambda t: t["d_test_acc"] > 0),
                "rate_test_acc_or_equal": rate(items, lambda t: t["d_test_acc"] >= 0),
                "rate_val_loss": rate(items, lambda t: t["d_val_loss"] < 0),
                # against single-task adapters that moved from θ*: one that kept its untrained start (early stopping
                # found no better check) makes any trained partner look like positive transfer
                "rate_test_loss_trained_refs": rate([t for t in items if not t.get("ref_kept_start")],
                                                    lambda t: t["d_test_loss"] < 0),
                "refs_kept_start": sum(bool(t.get("ref_kept_start")) for t in items),
                "share_positive_every_seed": float(np.mean(consistent_pos)) if consistent_pos else float("nan"),
                "share_negative_every_seed": float(np.mean(consistent_neg)) if consistent_neg else float("nan"),
                "mean_d_test_acc": float(np.mean([t["d_test_acc"] for t in items])),
                "mean_d_test_loss": float(np.mean([t["d_test_loss"] for t in items])),
                "paper": PAPER.get(kind, {}).get(size),
            })
    return out


def per_task(rows: list[dict], trans: list[dict], context: dict, types: list[str]) -> list[dict]:
    """Per task: θ*, the most common label, each type's single-task adapter (mean and seed spread) and the mean
    change from sharing its adapter with other tasks, by subset size."""
    out = []
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    for task in tasks:
        theta = [c["theta_star"][task]["test_acc"] for c in context.values() if c.get("theta_star") and task in c["theta_star"]]
        entry = {"task": task, "theta_star_acc": float(np.mean(theta)) if theta else None,
                 "majority_acc": next(iter(context.values()))["majority"].get(task)}
        for kind in types:
            singles = [r for r in rows if r["task"] == task and r["type"] == kind and r["size"] == 1]
            entry[f"{kind}_single_acc"] = float(np.mean([r["test_acc"] for r in singles])) if singles else None
            entry[f"{kind}_single_loss"] = float(np.mean([r["test_loss"] for r in singles])) if singles else None
            entry[f"{kind}_single_loss_spread"] = (float(np.ptp([r["test_loss"] for r in singles])) if len(singles) > 1 else None)
            entry[f"{kind}_single_kept_start"] = [r["seed"] for r in singles if r.get("best_step") == 0]
            for size in ("2", "3", "all"):
                ts = [t for t in trans if t["task"] == task and t["type"] == kind and t["size"] == size]
                entry[f"{kind}_{size}_d_acc"] = float(np.mean([t["d_test_acc"] for t in ts])) if ts else None
                entry[f"{kind}_{size}_d_loss"] = float(np.mean([t["d_test_loss"] for t in ts])) if ts else None
        out.append(entry)
    return out


def _f(x, fmt: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:{fmt}}"


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.0f}%"


def _incomplete_note(data: dict) -> str:
    todo = data.get("incomplete") or []
    if not todo:
        return ""
    listed = ", ".join(f"{t['type']} seed {t['seed']} ({t['done']} of {t['planned']})" for t in todo)
    if data.get("partial"):
        return f" No seed is complete yet: the tables below are the progress so far ({listed})."
    return f" Not counted until complete: {listed}."


def render(data: dict) -> str:
    lines = [f"# Positive transfer of task subsets: {data['name']}", "",
             f"Config `{data['config']}`{' with ' + ' '.join(data['overrides']) if data['overrides'] else ''}; tasks "
             f"{', '.join(data['tasks'])}; adapter types {', '.join(data['types'])}; seeds {data['seeds']}; "
             f"{data['jobs_done']} of {data['jobs_planned']} adapters finished"
             + (f" ({data['jobs_reused']} reused from the ensemble benchmark's run folders)" if data["jobs_reused"] else "") + "."
             + _incomplete_note(data), "",
             "S transfers positively to i ∈ S when the adapter trained on S has a lower **test loss** on i than the adapter "
             "trained on {i} alone, same seed and adapter type. Rate = the paper's (1/k) Σ_S |{i ∈ S positive}| / |S| "
             "over the subsets of that size. \"over seeds\": the mean of the per-seed rates (per seed in brackets); "
             "\"seed-averaged losses\": the rate after averaging each f_i(S) and f_i({i}) over seeds; \"same sign in "
             "every seed\": the share of (i, S) that are positive (negative) in every seed, what seed noise alone rarely gives. "
             "The paper's figures are Llama-3-8B on ten SuperGLUE tasks (Appendix B.6). \"single-task adapters that "
             "trained\": the rate over the (i, S) whose single-task adapter of i left θ* (early stopping kept a later "
             "check than the start; the count of those that did not is in brackets).", "",
             "| adapter | subsets | (i, S) | rate, test loss, over seeds | seed-averaged losses | positive in every seed | "
             "negative in every seed | rate, test accuracy (> / ≥) | rate, validation loss | single-task adapters that "
             "trained | mean Δ test acc | paper |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in data["summary"]:
        per_seed = ", ".join(_pct(v) for v in s["rate_test_loss_per_seed"].values())
        lines.append(f"| {s['type']} | {SIZE_LABELS[s['size']]} ({s['subsets']}) | {s['pairs_i_S']} | "
                     f"**{_pct(s['rate_test_loss'])}** [{per_seed}] | {_pct(s['rate_test_loss_seed_mean'])} | "
                     f"{_pct(s['share_positive_every_seed'])} | {_pct(s['share_negative_every_seed'])} | "
                     f"{_pct(s['rate_test_acc'])} / {_pct(s['rate_test_acc_or_equal'])} | {_pct(s['rate_val_loss'])} | "
                     f"{_pct(s.get('rate_test_loss_trained_refs'))} [{s.get('refs_kept_start', 0)}] | "
                     f"{s['mean_d_test_acc']:+.3f} | {_pct(s['paper'])} |")
    types = data["types"]
    lines += ["", "Per task: test accuracy of θ* (zero-shot), of the most common training label and of each single-task "
              "adapter (mean over seeds; its test-loss spread over seeds in brackets, the noise a transfer must exceed), "
              "then the mean change in test accuracy when the task shares its adapter (pairs / triples / all tasks):", "",
              "| task | θ* | most common label | " + " | ".join(f"{k} single-task | {k} Δ (2 / 3 / all)" for k in types) + " |",
              "|---|---:|---:|" + "---:|---|" * len(types)]
    for e in data["per_task"]:
        cells = []
        for k in types:
            kept = e.get(f"{k}_single_kept_start") or []
            mark = f", kept θ* in seed {', '.join(map(str, kept))}" if kept else ""
            cells.append(f"{_f(e[f'{k}_single_acc'])} ({_f(e[f'{k}_single_loss_spread'])}{mark})")
            cells.append(" / ".join(_f(e[f"{k}_{s}_d_acc"], "+.3f") for s in ("2", "3", "all")))
        lines.append(f"| {e['task']} | {_f(e['theta_star_acc'])} | {_f(e['majority_acc'])} | " + " | ".join(cells) + " |")
    lines += ["", "Every subset (means over seeds): per task, Δ test loss (Δ test accuracy) against its single-task adapter; "
              "negative Δ loss = positive transfer:", "", "| adapter | subset | per task |", "|---|---|---|"]
    for (kind, subset), items in data["by_subset"].items():
        cells = "; ".join(f"{t}: {v['d_test_loss']:+.3f} ({v['d_test_acc']:+.3f})" for t, v in items.items())
        lines.append(f"| {kind} | {subset} | {cells} |")
    cost = data["cost"]
    lines += ["", "Cost of the adapters finished here (reused ones count where they were trained): " + "; ".join(
        f"{k}: {c['adapters']} adapters, {c['wall_s']:.0f} s of training jobs, {c['train_flops']:.3g} FLOPs" for k, c in cost.items())
        + ".", ""]
    m = data["machine"]
    lines.append(f"Machine: {m['cpu']} ({m['cores']} cores), {m['date']}. Code: {data['commit']}. "
                 f"Command: `python benchmarks/{data['command']}`. Wall time of this invocation {data['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def plot(path: Path, data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    summary = data["summary"]
    labels = [f"{s['type']}\n{SIZE_LABELS[s['size']]}" for s in summary]
    x = np.arange(len(summary))
    ax.bar(x - 0.2, [s["rate_test_loss"] for s in summary], 0.4, color="tab:blue", label="ours (mean over seeds)")
    for i, s in enumerate(summary):
        vals = list(s["rate_test_loss_per_seed"].values())
        ax.plot([i - 0.2] * len(vals), vals, "k.", ms=6)
    paper = [s["paper"] if s["paper"] is not None else np.nan for s in summary]
    ax.bar(x + 0.2, paper, 0.4, color="tab:gray", label="paper (Llama-3-8B, SuperGLUE)")
    ax.axhline(0.5, color="black", ls=":", lw=1)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, 1.2)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("positive transfer rate (test loss)")
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    tasks = [e["task"] for e in data["per_task"]]
    series = [(kind, size) for kind in data["types"] for size in ("2", "3", "all")
              if any(e.get(f"{kind}_{size}_d_acc") is not None for e in data["per_task"])]
    width = 0.8 / max(1, len(series))
    for j, (kind, size) in enumerate(series):
        vals = [e.get(f"{kind}_{size}_d_acc") for e in data["per_task"]]
        ax2.bar(np.arange(len(tasks)) + (j - (len(series) - 1) / 2) * width, [np.nan if v is None else v for v in vals],
                width, label=f"{kind}, {SIZE_LABELS[size]}")
    ax2.axhline(0, color="black", lw=1)
    ax2.set_xticks(np.arange(len(tasks)), tasks)
    ax2.set_ylabel("Δ test accuracy vs the task's own adapter")
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax2.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Positive transfer of task subsets: {data['name']} (dots: seeds; dotted: 50%)")
    save_figure(fig, path)


def completeness(seed_plans: dict, rows: list[dict]) -> tuple[set[tuple[int, str]], list[dict]]:
    """The (seed, adapter type) pairs whose every planned adapter finished, and the progress of the others. A rate
    over part of a seed would be biased: the adapters reused from the ensemble benchmark are the subsets its
    affinity chose."""
    done = {(r["seed"], r["job"]) for r in rows}
    complete, incomplete = set(), []
    for seed, (_, plans, _) in sorted(seed_plans.items()):
        for kind in dict.fromkeys(p["type"] for p in plans):
            ids = {p["job"].id for p in plans if p["type"] == kind}
            n = sum((seed, i) in done for i in ids)
            if n == len(ids):
                complete.add((seed, kind))
            else:
                incomplete.append({"seed": seed, "type": kind, "done": n, "planned": len(ids)})
    return complete, incomplete


def publish(name: str, config: Path | None, overrides: list[str], types: list[str], seed_plans: dict, t0: float,
            command: str) -> Path:
    all_rows, context = collect(seed_plans)
    complete, incomplete = completeness(seed_plans, all_rows)
    # the tables count complete (seed, type) pairs only; before any is complete they show the progress so far
    rows = [r for r in all_rows if (r["seed"], r["type"]) in complete] or all_rows
    names = list(dict.fromkeys(t for _, plans, _ in seed_plans.values() for p in plans for t in p["subset"]))
    trans = transfers(rows, len(names))
    seeds = sorted(seed_plans)
    by_subset: dict[tuple[str, str], dict[str, dict]] = {}
    for t in trans:
        key = (t["type"], "+".join(t["subset"]))
        by_subset.setdefault(key, {}).setdefault(t["task"], []).append(t)
    by_subset_mean = {k: {task: {"d_test_loss": float(np.mean([x["d_test_loss"] for x in v])),
                                 "d_test_acc": float(np.mean([x["d_test_acc"] for x in v]))} for task, v in d.items()}
                      for k, d in by_subset.items()}
    planned = [(seed, p) for seed, (_, plans, _) in seed_plans.items() for p in plans]
    done_jobs = {(r["seed"], r["job"]) for r in all_rows}
    cost: dict[str, dict] = {}
    for seed, p in planned:
        if (seed, p["job"].id) in done_jobs and not p["reused"]:
            rec = read_job_record(seed_plans[seed][0], p["job"].id) or {}
            c = cost.setdefault(p["type"], {"adapters": 0, "wall_s": 0.0, "train_flops": 0.0})
            c["adapters"] += 1
            c["wall_s"] += float(rec.get("wall_s", 0.0))
            c["train_flops"] += float(rec.get("metrics", {}).get("train_flops", 0.0))
    data = {
        "name": name, "config": str(config.resolve().relative_to(HERE.parent)) if config else "embedded suite",
        "overrides": overrides, "tasks": names, "types": types, "seeds": seeds,
        "jobs_planned": len(planned), "jobs_done": sum((s, p["job"].id) in done_jobs for s, p in planned),
        "jobs_reused": sum(p["reused"] for _, p in planned),
        "incomplete": incomplete, "partial": not complete,
        "summary": summarize(trans, seeds, types), "per_task": per_task(rows, trans, context, types),
        "by_subset": {f"{k[0]}|{k[1]}": v for k, v in by_subset_mean.items()},
        "rows": rows, "transfers": trans, "context": {str(k): v for k, v in context.items()}, "cost": cost,
        "paper": PAPER, "commit": current_commit(), "command": command, "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine_info(),
    }
    text = render({**data, "by_subset": by_subset_mean})
    path = write_results(f"positive_transfer_{name}", data, text)
    if data["summary"]:
        plot(path.with_suffix(".png"), data)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--name", default=None, help="result name (default: the config's stem; --quick: decoder_quick)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 (--quick: 0)")
    ap.add_argument("--adapters", nargs="+", default=["lora", "qlora"], help="adapter types (default lora qlora)")
    ap.add_argument("--sizes", nargs="+", default=["2", "3", "all"], choices=["2", "3", "all"],
                    help="subset sizes besides the single tasks (default 2 3 all)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--quick", action="store_true", help="tiny-llama on three embedded tasks (smoke test)")
    ap.add_argument("--render-only", action="store_true",
                    help="write the result from the adapters already finished, training nothing (reads the run "
                         "folders only, so it works while another invocation trains in them)")
    args = ap.parse_args(argv)
    if args.quick:
        config, name, overrides = None, args.name or "decoder_quick", [*QUICK, *args.overrides]
    else:
        config, name, overrides = args.config, args.name or args.config.stem, list(args.overrides)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1])
    command = "positive_transfer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    root = RUNS / f"ensemble_{name}"
    seed_plans: dict[int, tuple[Path, list[dict], str]] = {}
    if args.render_only:
        for seed in seeds:
            cfg = load_config(config, [*overrides, f"seed={seed}"])
            run = (root / f"seed{seed}").absolute()
            names = [t.name for t in read_prepared(run)]
            plans = plan_jobs(cfg, run, names, args.adapters, subsets_of(names, args.sizes))
            for p in plans:  # every finished adapter is "reusable" now: say which the ensemble benchmark trained
                p["reused"] = p["job"].method != "positive_transfer"
            seed_plans[seed] = (run, plans, reference_job(names).fingerprint(cfg, read_data_manifest(run)["fingerprint"]))
        publish(name, config, overrides, args.adapters, seed_plans, t0, command)
        print((RESULTS / f"positive_transfer_{name}.md").read_text())
        return 0
    with run_lock(root):
        for seed in seeds:
            cfg = load_config(config, [*overrides, f"seed={seed}"])
            run = (root / f"seed{seed}").absolute()
            res = run_stages(cfg, run, until="model_check")
            if res["model_check"].get("kind") == "encoder":  # encoders train from the probed heads
                run_stages(cfg, run, until="featurize")
            names = [t.name for t in read_prepared(run)]
            plans = plan_jobs(cfg, run, names, args.adapters, subsets_of(names, args.sizes))
            theta = reference_job(names)  # θ*'s outputs: the zero-shot row (the pipeline's own job, shared with it)
            seed_plans[seed] = (run, plans, theta.fingerprint(cfg, read_data_manifest(run)["fingerprint"]))
            reused = sum(p["reused"] for p in plans)
            print(f"seed {seed}: {len(plans)} adapters ({reused} reused from earlier runs in {run})", flush=True)
            # θ* and the single-task adapters first (every rate needs them), then the largest subsets (the pool's
            # idle tail is then a short job)
            jobs = [theta] + sorted({p["job"].id: p["job"] for p in plans}.values(),
                                    key=lambda j: (len(j.tasks) != 1, -len(j.tasks)))
            publish(name, config, overrides, args.adapters, seed_plans, t0, command)
            run_jobs(cfg, run, jobs, desc=f"positive transfer, seed {seed}",
                     on_done=lambda rec: publish(name, config, overrides, args.adapters, seed_plans, t0, command))
            publish(name, config, overrides, args.adapters, seed_plans, t0, command)
    print((RESULTS / f"positive_transfer_{name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
