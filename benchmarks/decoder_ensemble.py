"""The decoder ensemble benchmark (issue 38, item 3): EnsembleLoRA on SmolLM2 scoring verbalized labels,
against every baseline and against the groups each affinity kind gives, over seeds.

Per seed:

1. ``elora run`` of the config (``benchmarks/configs/decoder_glue_smollm2.yaml``: SST-2, CoLA, QNLI, MRPC,
   100 training samples each, SmolLM2-135M + LoRA r=4, max_length 64): the ensemble (groups from
   ``estimate.affinity: first_order``, one boosting step, learned weights) and the baselines one LoRA adapter
   (``single_adapter``), one QLoRA adapter (``single_qlora``), per-task adapters, MTL-FT and random groups
   of the ensemble's sizes, each with test accuracy, training FLOPs, peak memory and wall time (the paper's
   Table 4 columns), θ* (zero-shot: the untrained model scoring the label words) and the most common label.
   The run folder and the seed record are ``benchmarks/ensemble_accuracy.py``'s (``runs/ensemble_<name>/seed<k>``,
   ``results/ensemble_accuracy_<name>_seeds/seed<k>.json``): either script reuses what the other finished.
2. One variant per other affinity kind (``transfer``, ``paper``): a copy of the seed's run folder (data,
   features, θ*'s outputs and the adapters) with ``estimate.affinity=<kind>`` and no baselines; estimate,
   cluster, train, boost, combine and evaluate run again, and group adapters whose tasks did not change are
   reused. Its ensemble joins the seed's table as ``ensemble_<kind>``, its groups alone as ``groups_only_<kind>``.

Results — ``benchmarks/results/ensemble_accuracy_<name>.{json,md,png}``, the format of ensemble_accuracy.py
(so ``summarize.py`` lists it), plus the groups of each kind, each task's single-adapter − per-task-adapter
difference (negative transfer of the shared adapter) and the paper's Table 4 claims — are rewritten after every
seed and every variant, so a run stopped at any point keeps what finished; rerunning the same command resumes
(finished seeds and variants are read from their records, a half-finished pipeline resumes in its run folder).

    python benchmarks/decoder_ensemble.py                         # the config above, seeds 0 1 2
    python benchmarks/decoder_ensemble.py --seeds 3 4             # more seeds (the table takes every recorded seed given)
    python benchmarks/decoder_ensemble.py --quick                 # tiny-llama smoke test (< 3 min; results are no figures)

Budget (2 cores; derivation in the config's comment): one seed trains 8 "units" (a method's training once over
all four tasks: ~960 core-s each at max_length 64, 4 epochs, 100 samples per task) plus the logits every job
writes, featurisation and job start-up: ~10,400 core-s = ~1.6 h of the two cores; 3 seeds ~4.9 h at full epochs,
less when early stopping ends adapters sooner. ``benchmarks/positive_transfer.py`` (item 2) then trains its task
subsets in the same run folders (seeds 0 and 1), reusing this benchmark's single-task, all-task and group
adapters: ~3.8 h. Run the two one after the other (a lock file keeps them from sharing a run folder at once).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RESULTS, RUNS, current_commit, machine_info, write_results  # noqa: E402,I001
from benchmarks.ensemble_accuracy import (REPORT_KEYS, aggregate, config_fingerprint, load_seed_record, paired,  # noqa: E402
                                          plot, render, save_seed_record, seed_record_path, verdict)
from elora_ray import load_config, run_pipeline  # noqa: E402
from elora_ray.report.plots import METHOD_LABELS  # noqa: E402

DEFAULT_CONFIG = HERE / "configs" / "decoder_glue_smollm2.yaml"
KINDS = ("first_order", "transfer", "paper")
#: the smoke test: tiny-llama (a random 2-layer Llama with MiniLM's tokenizer) on three embedded tasks, with the
#: config's non-default settings (two groups, one check per epoch, the issue's baselines). Not a result.
QUICK = ["model.name_or_path=tiny-llama", "model.max_length=32", "suite.samples_per_task=40", "suite.tasks_per_group=[2,1]",
         "featurize.dim=32", "featurize.shard_size=64", "estimate.num_subsets=24", "cluster.num_groups=2",
         "train.epochs=1", "train.evals_per_epoch=1", "train.patience=2", "train.batch_size=8", "boost.steps=1",
         "baselines.methods=[single_adapter,single_qlora,per_task_adapters,mtl_ft,random_groups]"]
PAPER_TABLE4 = [  # Llama-3.1-8B + QLoRA on ten SuperGLUE tasks (paper abstract, §1 and Table 4)
    ("ensemble − single QLoRA adapter, average test accuracy", "+10 points"),
    ("ensemble's extra compute over one QLoRA adapter", "+9%"),
    ("ensemble's compute vs MTL-FT, at similar accuracy", "45% less"),
]
for _kind in KINDS:
    METHOD_LABELS.setdefault(f"ensemble_{_kind}", f"EnsembleLoRA, {_kind} affinity")
    METHOD_LABELS.setdefault(f"groups_only_{_kind}", f"{_kind}-affinity groups alone (no boosting)")


@contextlib.contextmanager
def run_lock(folder: Path):
    """Hold ``folder/.benchmark.lock`` (exclusive): decoder_ensemble.py and positive_transfer.py share run
    folders, so a second one started meanwhile waits instead of training the same adapter twice at once."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".benchmark.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{folder}: another benchmark holds its run folders; waiting for it to finish", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def config_and_name(args) -> tuple[Path | None, str, list[str]]:
    """(config file or None for the embedded suite, result name, overrides) of the parsed arguments."""
    if args.quick:
        return None, args.name or "decoder_quick", [*QUICK, *args.overrides]
    return args.config, args.name or args.config.stem, list(args.overrides)


def variant_record_path(name: str, seed: int, kind: str) -> Path:
    return RESULTS / f"ensemble_accuracy_{name}_seeds" / f"seed{seed}_affinity_{kind}.json"


def variant_overrides(kind: str) -> list[str]:
    return [f"estimate.affinity={kind}", "baselines.methods=[]"]


def seed_variant_dir(main: Path, variant: Path) -> None:
    """Start a variant's run folder from the seed's: everything but Ray Train's checkpoints and what the
    evaluation, the report and the baselines wrote (the variant trains no baselines)."""
    if variant.exists() or not main.is_dir():
        return  # resumes where it stopped; without the seed's folder (only its record kept) it starts afresh
    tmp = variant.with_name(variant.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(main, tmp, symlinks=True, ignore=shutil.ignore_patterns(
        "ray_train", "evaluation.json", "report.json", "report.md", "plots", "baselines", ".benchmark.lock"))
    tmp.rename(variant)


def run_variant(config: Path | None, overrides: list[str], name: str, seed: int, kind: str, main_dir: Path,
                rerun: bool) -> dict:
    cfg = load_config(config, [*overrides, *variant_overrides(kind), f"seed={seed}"])
    fp = config_fingerprint(cfg)
    path = variant_record_path(name, seed, kind)
    if path.is_file() and not rerun:
        record = json.loads(path.read_text())
        if record.get("config_fingerprint") == fp:
            print(f"seed {seed}, {kind} affinity: reusing {path} (commit {record['commit']})", flush=True)
            return record
    out = main_dir.with_name(f"{main_dir.name}_affinity_{kind}")
    seed_variant_dir(main_dir, out)
    t0 = time.perf_counter()
    report = run_pipeline(cfg, out)
    record = {"seed": seed, "kind": kind, "config_fingerprint": fp, "commit": current_commit(), "machine": machine_info(),
              "seconds": round(time.perf_counter() - t0, 1), "report": {k: report[k] for k in REPORT_KEYS if k in report}}
    write_results(path.stem, record, f"seed {seed}, {kind} affinity: see {path.name}\n", path.parent)
    path.with_suffix(".md").unlink(missing_ok=True)
    return record


def merged_report(main: dict, variants: dict[str, dict]) -> dict:
    """The seed's report with each variant's ensemble as method ``ensemble_<kind>`` and its groups alone as
    ablation ``groups_only_<kind>``."""
    rep = json.loads(json.dumps(main["report"]))
    for kind, rec in variants.items():
        v = rec["report"]
        rep["methods"][f"ensemble_{kind}"] = v["methods"]["ensemble"]
        if "groups_only" in v.get("ensemble_ablations", {}):
            rep["ensemble_ablations"][f"groups_only_{kind}"] = v["ensemble_ablations"]["groups_only"]
    return rep


def extra_pairs(reports: list[dict], kinds: list[str]) -> list[dict]:
    """Comparisons beyond ensemble_accuracy's: the shared adapter's negative transfer (per-task adapters − one
    adapter), the ensembles against one LoRA / QLoRA adapter, each kind's groups alone against random groups."""
    methods = reports[0]["methods"]
    ablations = reports[0]["ensemble_ablations"]
    pairs = [("per_task_adapters", "single_adapter"), ("ensemble", "single_qlora"), ("single_adapter", "single_qlora")]
    for kind in kinds:
        pairs += [(f"ensemble_{kind}", "single_adapter"), (f"ensemble_{kind}", "single_qlora"),
                  (f"groups_only_{kind}", "random_groups")]
    pairs += [(m, "theta_star") for m in ("per_task_adapters", "single_qlora") if "theta_star" in ablations]
    known = lambda k: k in methods or k in ablations  # noqa: E731
    return [paired(reports, a, b) for a, b in pairs if known(a) and known(b)]


def negative_transfer(reports: list[dict]) -> list[dict]:
    """Per task: one adapter on all tasks − the task's own adapter, test accuracy per seed (< 0: the shared
    adapter loses on that task)."""
    if not all(m in reports[0]["methods"] for m in ("single_adapter", "per_task_adapters")):
        return []
    from benchmarks.common import paired_stats

    rows = []
    for task in reports[0]["methods"]["single_adapter"]["per_task"]:
        diffs = [r["methods"]["single_adapter"]["per_task"][task] - r["methods"]["per_task_adapters"]["per_task"][task]
                 for r in reports]
        rows.append({"task": task, **paired_stats(diffs)})
    return rows


def paper_claims(agg: dict) -> list[tuple[str, str, str]]:
    m = agg["methods"]
    ens = m["ensemble"]
    ours = []
    if "single_qlora" in m:
        q = m["single_qlora"]
        ours.append(f"{100 * (ens['avg_accuracy_mean'] - q['avg_accuracy_mean']):+.1f} points")
        ours.append(f"{100 * (ens['train_flops_mean'] / q['train_flops_mean'] - 1):+.0f}% FLOPs, "
                    f"{ens['peak_memory_mb_mean'] - q['peak_memory_mb_mean']:+.0f} MB peak memory of a training process")
    else:
        ours += ["not run", "not run"]
    if "mtl_ft" in m:
        r = m["mtl_ft"]
        ratio = ens["train_flops_mean"] / r["train_flops_mean"]
        ours.append(f"{100 * abs(1 - ratio):.0f}% {'less' if ratio <= 1 else 'more'} FLOPs at "
                    f"{100 * (ens['avg_accuracy_mean'] - r['avg_accuracy_mean']):+.1f} points")
    else:
        ours.append("not run")
    return [(what, paper, mine) for (what, paper), mine in zip(PAPER_TABLE4, ours)]


def render_extra(data: dict) -> str:
    lines = ["", "## Affinity kinds, negative transfer, the paper's Table 4", ""]
    if data["variants"]:
        lines += ["Groups per seed by affinity kind (the main ensemble's: " + data["kind"] + "):", "",
                  "| seed | " + " | ".join([data["kind"], *data["variants"]]) + " |", "|---:|" + "---|" * (1 + len(data["variants"]))]
        for i, seed in enumerate(data["seeds"]):
            cells = [str(data["groups"][i])] + [str(data["variant_groups"][k][i]) for k in data["variants"]]
            lines.append(f"| {seed} | " + " | ".join(cells) + " |")
        lines.append("")
    if data.get("pending_variants"):
        lines += [f"Not yet in the table (not finished for every seed listed): {', '.join(data['pending_variants'])}.", ""]
    extra = data["aggregate"].get("extra_paired", [])
    if extra:
        label = lambda k: {"theta_star": "θ* (zero-shot)"}.get(k) or METHOD_LABELS.get(k, k)  # noqa: E731
        lines += ["More comparisons paired by seed (difference of average test accuracy, 95% t-interval over seeds):", "",
                  "| comparison | mean difference | 95% interval | seeds ahead | verdict |", "|---|---:|---:|---:|---|"]
        for pr in extra:
            ci = "–" if pr["ci95"] is None else f"[{pr['ci95'][0]:+.4f}, {pr['ci95'][1]:+.4f}]"
            lines.append(f"| {label(pr['a'])} − {label(pr['b'])} | {pr['mean']:+.4f} | {ci} | {pr['a_ahead']}/{pr['seeds']} | {verdict(pr)} |")
        lines.append("")
    neg = data["aggregate"].get("negative_transfer", [])
    if neg:
        lines += ["Negative transfer of the shared adapter: per task, one LoRA adapter on all tasks − the task's own "
                  "adapter (test accuracy, paired by seed):", "",
                  "| task | mean difference | 95% interval | seeds where the shared adapter is ahead |", "|---|---:|---:|---:|"]
        for r in neg:
            ci = "–" if r["ci95"] is None else f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"
            lines.append(f"| {r['task']} | {r['mean']:+.3f} | {ci} | {r['a_ahead']}/{r['seeds']} |")
        lines.append("")
    claims = data["aggregate"].get("paper_claims", [])
    if claims:
        lines += ["The paper's Table 4 claims (Llama-3.1-8B + QLoRA, ten SuperGLUE tasks) next to ours (FLOPs of the "
                  "ensemble include featurisation; memory is the peak of one training process on this CPU):", "",
                  "| claim | paper | ours |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in claims]
        lines.append("")
    m = data["machine"]
    lines.append(f"Machine: {m['cpu']} ({m['cores']} cores), {m['date']}. Command: `python benchmarks/{data['command']}`.")
    return "\n".join(lines) + "\n"


def publish_results(name: str, config: Path | None, overrides: list[str], seeds: list[int], mains: dict[int, dict],
                    variants: dict[int, dict[str, dict]], kinds: list[str], main_kind: str, command: str) -> Path | None:
    """Aggregate every seed finished so far (and each variant finished for all of them) and write the results."""
    done = [s for s in seeds if s in mains]
    if not done:
        return None
    complete = [k for k in kinds if all(k in variants.get(s, {}) for s in done)]
    reports = [merged_report(mains[s], {k: variants[s][k] for k in complete}) for s in done]
    agg = aggregate(reports)
    agg["extra_paired"] = extra_pairs(reports, complete)
    agg["negative_transfer"] = negative_transfer(reports)
    agg["paper_claims"] = paper_claims(agg)
    data = {
        "name": name,
        "config": str(config.resolve().relative_to(HERE.parent)) if config else "embedded default",
        "overrides": overrides, "seeds": done, "seeds_requested": seeds,
        "split": reports[0]["evaluation_split"], "tasks": len(reports[0]["tasks"]),
        "kind": main_kind, "variants": complete, "pending_variants": [k for k in kinds if k not in complete],
        "groups": [r["groups"] for r in reports],
        "variant_groups": {k: [variants[s][k]["report"]["groups"] for s in done] for k in complete},
        "per_seed": [{"seed": s, "methods": r["methods"], "ensemble_ablations": r["ensemble_ablations"],
                      "boosting": r["boosting"], "comparisons": r.get("comparisons", {})} for s, r in zip(done, reports)],
        "aggregate": agg,
        "commits": [mains[s]["commit"] for s in done],
        "seconds_per_seed": [mains[s]["seconds"] + sum(variants[s][k]["seconds"] for k in complete) for s in done],
        "command": command, "machine": machine_info(),
    }
    text = render(name, data) + render_extra(data)
    path = write_results(f"ensemble_accuracy_{name}", data, text)
    plot(path.with_suffix(".png"), data)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--name", default=None, help="result name (default: the config's stem; --quick: decoder_quick)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--quick: 0)")
    ap.add_argument("--kinds", nargs="*", default=None, choices=KINDS,
                    help="affinity kinds run as variants besides the config's (default: the other two)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--quick", action="store_true", help="tiny-llama on three embedded tasks (smoke test)")
    ap.add_argument("--rerun", action="store_true", help="run seeds and variants again even if a matching record is stored")
    args = ap.parse_args(argv)
    config, name, overrides = config_and_name(args)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    main_kind = load_config(config, overrides).estimate.affinity
    kinds = [k for k in (args.kinds if args.kinds is not None else KINDS) if k != main_kind]
    command = "decoder_ensemble.py " + " ".join(argv if argv is not None else sys.argv[1:])
    mains: dict[int, dict] = {}
    variants: dict[int, dict[str, dict]] = {}
    root = RUNS / f"ensemble_{name}"
    with run_lock(root):
        for seed in seeds:
            cfg = load_config(config, [*overrides, f"seed={seed}"])
            fp = config_fingerprint(cfg)
            record = None if args.rerun else load_seed_record(name, seed, fp)
            main_dir = root / f"seed{seed}"
            if record is None:
                t0 = time.perf_counter()
                report = run_pipeline(cfg, main_dir)
                record = save_seed_record(name, seed, fp, report, time.perf_counter() - t0)
            else:
                print(f"seed {seed}: reusing {seed_record_path(name, seed)} (commit {record['commit']})", flush=True)
            mains[seed] = record
            publish_results(name, config, overrides, seeds, mains, variants, kinds, main_kind, command)
            for kind in kinds:
                variants.setdefault(seed, {})[kind] = run_variant(config, overrides, name, seed, kind, main_dir, args.rerun)
                publish_results(name, config, overrides, seeds, mains, variants, kinds, main_kind, command)
    path = RESULTS / f"ensemble_accuracy_{name}.md"
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
