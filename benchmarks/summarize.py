"""Write benchmarks/README.md from the JSON results (no number is typed by hand).

    python benchmarks/summarize.py
    python benchmarks/summarize.py --results DIR --out FILE --include-quick   # (make bench-quick)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
INCLUDE_QUICK = False

INTRO = """# Benchmarks

Every figure the project claims comes from a script in this folder. Each writes JSON + a
markdown table (+ PNG plots) into `results/`, with the machine and date; this page is
generated from those files by `python benchmarks/summarize.py`.

| script | what |
|---|---|
| `featurize_speed.py` | featurization throughput: ours vs a naive per-sample loop vs plain forward+backward; memory while streaming |
| `estimate_speed.py` | estimation stage time (k subsets as Ray tasks) and planted-group recovery on the embedded suite |
| `estimation_fidelity.py` | linearised estimate vs real fine-tuning (paper Table 3 / Table 5) |
| `ensemble_accuracy.py` | the ensemble vs six baselines over seeds: accuracy, FLOPs, memory, time (paper Figure 3 / Table 7) |
| `federated_shakespeare.py` | FedAvg vs MTL-FT vs the federated ensemble on ≥ 500 clients: Shakespeare roles, or mixed sources with a known truth (`--config benchmarks/configs/federated_mixed_smollm2.yaml`) (paper §3 "Extension") |
| `scaling.py` | stage wall time vs tasks n (10 → 500 synthetic tasks), subsets k, dimension d, 1 vs 2 CPUs |
| `affinity_planted.py` | do parts of one real dataset group together? ARI vs the sources, chosen m and true m, per affinity kind |
| `affinity_scale.py` | grouping quality (ARI) and stage cost at 10 → 500 planted synthetic tasks, default settings |
| `select_m.py` | every `cluster.select_m` rule (auto, eigengap with and without local scaling, heldout, density) re-scored on the stored planted runs of the two above (no model runs) |
| `sharpness.py` | Hessian-trace sharpness and train–test gap vs adapter rank and k-adapter ensembles (paper §4, Figure 4) |
| `training_sweep.py` | default training settings: one adapter under several lr / schedules vs the untrained probed model, chosen on validation |
| `demo_time.py` | wall time of `make demo` (the README's figure), fresh run folders |
| `federated_engines.py` | FedAvg wall time on the client actor pool vs Ray Train (same adapter) |
| `fidelity_surrogates.py` | the stored fidelity run's real fine-tunes against the surrogate solved three ways (ridge, early-stopped GD, Adam on the linearised model), no new training |
| `decoder_ensemble.py` | SmolLM2 scoring verbalized labels on GLUE tasks: the ensemble (three affinity kinds) vs one LoRA / QLoRA adapter, per-task adapters, MTL-FT, random groups, zero-shot θ*, paired by seed, with Table 4's costs |
| `positive_transfer.py` | the paper's §2.1 premise on the decoder: the share of 2–4-task subsets whose shared adapter beats each task's own adapter, LoRA and QLoRA, over seeds |
| `memory_plan.py` | the resource plan (`elora plan`) against each process's measured peak host memory: MiniLM, SmolLM2 and a random Llama-3.2-1B-shaped model, LoRA and QLoRA, on CPUs |
| `gpu_check.py` | on a lent GPU: our featurize (full_rank, adapter, QLoRA), a Ray Train worker and autocast evaluation against speed targets and the plan's memory (exit code) |
| `serve_load.py` | `elora serve` under load: throughput and p50/p99 latency at 1–32 clients, batched vs unbatched vs the predictor called directly in one process (tiny-bert, MiniLM) |
| `add_task.py` | `elora add-task` against a full rerun: where the added task lands, time ratio, every task's accuracy with paired intervals (embedded suite, 21-task planted suite; `grow.replay` all vs 1) |
| `decoder_speed.py` | SmolLM2 on CPUs: training and featurize (full_rank, adapter) samples/s against a plain forward+backward, for LoRA fp32, LoRA under bf16 autocast and QLoRA |
| `affinity_halves.py` | does each task's two halves group together under the first-order affinity and its variants (plain, class-balanced, θ*-calibrated)? stored features, no model runs |
| `ensemble_levers.py` | the ensemble's combination levers refit on finished runs (no training): learned vs cross-validated shrunk vs uniform vs own-group weights, boosting steps that raise validation loss kept or dropped, paired by seed and by sample |
| `attention_kernels.py` | bf16 on CPUs: a LoRA training step and a forward with PyTorch's fused attention kernel vs transformers' eager attention (MiniLM, SmolLM2), next to fp32: the rule behind `PLAIN_ATTENTION_MAX_SCORES` |
| `grouping_oracle.py` | every partition of a mix's tasks scored by `positive_transfer.py`'s subset adapters (no model runs): where each affinity's groups, per-task adapters, one adapter and random groups rank, against the partition validation would pick |
| `quick.py` | `make bench-quick`: every script above in its smoke-test mode but `grouping_oracle.py`, whose inputs are other scripts' results (`tests/test_benchmark_tables.py` checks it) (< 5 min; CI runs it, results not kept) |
"""



def _less_or_more(ratio: float) -> str:
    """0.79 → '21% less', 1.27 → '27% more'."""
    if ratio != ratio:
        return "n/a"
    return f"{100 * (1 - ratio):.0f}% less" if ratio <= 1 else f"{100 * (ratio - 1):.0f}% more"


def _signed(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:+.2f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:+.0f}%"


def _none_to_nan(obj):
    """Results keep undefined statistics (e.g. a correlation of 2 points) as null; as NaN they
    format as 'nan' instead of breaking the page."""
    if obj is None:
        return float("nan")
    if isinstance(obj, dict):
        return {k: _none_to_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_none_to_nan(v) for v in obj]
    return obj


def _read(path: Path) -> dict:
    return _none_to_nan(json.loads(path.read_text()))


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return _read(path) if path.is_file() else None


def _adapter_kind(d: dict) -> str:
    """How the result's config names its adapter type in the table ("LoRA" unless the config says otherwise)."""
    names = {"lora": "LoRA", "qlora": "QLoRA", "adapter": "bottleneck-adapter", "qadapter": "QAdapter", "mplora": "MPLoRA"}
    path = HERE.parent / str(d.get("config", ""))
    if not d.get("config") or not path.is_file():
        return "LoRA"
    import yaml

    cfg = yaml.safe_load(path.read_text()) or {}
    kind = (cfg.get("adapter") or {}).get("type", "lora")
    for o in d.get("overrides") or []:
        if o.startswith("adapter.type="):
            kind = o.split("=", 1)[1]
    return names.get(kind, kind)


def _skip(name: str) -> bool:
    return "quick" in name and not INCLUDE_QUICK


# (a, b) of a paired comparison in an ensemble benchmark -> (target, headline row label)
PAIRED_ROWS = {
    ("ensemble", "single_adapter"): ("–", "ensemble vs single LoRA adapter"),
    ("single_adapter", "theta_star"): ("> 0", "trained single adapter vs untrained probed model θ*"),
    ("ensemble", "random_groups"): ("–", "ensemble vs random groups"),
    ("groups_only", "random_groups"): ("–", "our groups alone (no boosting) vs random groups"),
}


def points(x: float) -> str:
    """A difference of accuracies in signed points, one decimal. The sign stays on values that
    round to zero: an interval bound of -0.0 says the interval reaches below 0."""
    return f"{100 * x:+.1f}"


def paired_points(pr: dict) -> str:
    lo, hi = pr["ci95"]
    return (f"{points(pr['mean'])} points, 95% interval [{points(lo)}, {points(hi)}], "
            f"ahead in {pr['a_ahead']}/{pr['seeds']} seeds")


def main(argv: list[str] | None = None) -> int:
    global RESULTS, INCLUDE_QUICK
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of result files (default: results/)")
    ap.add_argument("--out", type=Path, default=HERE / "README.md")
    ap.add_argument("--include-quick", action="store_true", help="also tabulate smoke-test (quick) results")
    args = ap.parse_args(argv)
    RESULTS, INCLUDE_QUICK = args.results, args.include_quick
    lines = [INTRO, "## Ours vs the paper's claims", "", "| claim (paper) | paper | ours | source |", "|---|---|---|---|"]
    est = load("estimate_speed")
    if est:
        lines.append(f"| planted groups recovered (embedded suite, ARI) | – | {est['planted_ari']:.2f} (m={est['m']}) | `estimate_speed.md` |")
        lines.append(f"| estimation of k={est['subsets']} subsets, n={est['tasks']}, ~{est['train_samples_per_task']['mean']:.0f} samples/task, "
                     f"d={est['dim']} (target < 30 s) | \"seconds\" | {est['estimate_s_best']} s (first run {est['estimate_s'][0]} s; "
                     f"+{est['ray_start_s']} s Ray start) | `estimate_speed.md` |")
    for f in sorted(RESULTS.glob("estimation_fidelity_*.json")):
        d = _read(f)
        if _skip(f.name):
            continue
        s = d["summary"]
        best_key = f"{s['best_l2_by_relative_error']:g}"
        lines.append(f"| loss relative error, d={s['dim']} ({d['name']}) | < 5% at d ≥ 400 | {100 * s['loss']['relative_error']:.1f}% "
                     f"(λ={s.get('headline', s['estimate_l2'])}; best λ in sweep {s['best_l2_by_relative_error']:g}: "
                     f"{100 * s['by_l2'][best_key]['relative_error']:.1f}%; predicting no change: {100 * s.get('no_change_baseline_relative_error', float('nan')):.1f}%) | `{f.with_suffix('.md').name}` |")
        if len(d.get("by_dim", [])) > 1:
            lines.append(f"| loss relative error at d = {', '.join(str(r['dim']) for r in d['by_dim'])} ({d['name']}) | "
                         f"within 9%, < 5% for d ≥ 400 | "
                         + "; ".join(f"d={r['dim']}: {100 * r['relative_error']:.1f}% (best λ {100 * r['best_relative_error']:.1f}%), "
                                     f"Spearman {r['spearman']:.2f}" for r in d["by_dim"]) + f" | `{f.with_suffix('.md').name}` |")
        if "accuracy_relative_error" in s:
            nc = s.get("noise_ceiling")
            nc = nc if isinstance(nc, dict) else {}  # None (no repeats) reads as nan here
            floor = (f"; two fine-tunes differ by {100 * nc['accuracy_relative_difference']:.1f}%"
                     if "accuracy_relative_difference" in nc else "")
            base = s.get("no_change_baseline_accuracy_relative_error")
            context = (f"(predicting no change: {100 * base:.1f}%{floor})" if base is not None and base == base
                       else "(an older run: share of ĥ > 0, no baseline recorded)")
            lines.append(f"| accuracy relative error ({d['name']}) | 4.3–4.8% | {100 * s['accuracy_relative_error']:.1f}% {context} "
                         f"| `{f.with_suffix('.md').name}` |")
        lines.append(f"| Spearman, estimated vs true ({d['name']}) | up to 0.6 | {s['loss']['spearman']:.2f} overall; "
                     f"{s['loss']['spearman_within_task']:.2f} within task | `{f.with_suffix('.md').name}` |")
        lines.append(f"| FLOPs speed-up of estimation vs fine-tuning ({d['name']}) | 105× | "
                     f"{s['cost']['flops_ratio_extrapolated']:.0f}× at k={s['cost']['extrapolated_to_subsets']} "
                     f"(extrapolated; {s['cost']['flops_ratio_same_subsets']:.1f}× for the {s['subsets']} subsets measured) | `{f.with_suffix('.md').name}` |")
        lines.append(f"| first-order error of h, Σ(h−ĥ)²/Σh² ({d['name']}) | < 1% (distances 0.05–0.25%) | "
                     f"{100 * s['first_order']['rss_relative']:.2g}% at distance {100 * s['fine_tuning']['mean_relative_distance']:.2f}% | "
                     f"`{f.with_suffix('.md').name}` |")
    for f in sorted(RESULTS.glob("fidelity_surrogates*.json")):
        d = _read(f)
        if _skip(f.name):
            continue
        cells = "; ".join(f"{r['kind']} {100 * r['cv_relative_error']:.2f}%" for r in d["results"])
        lines.append(f"| loss relative error by how the surrogate is solved (2-fold CV of its constant) | – | {cells} "
                     f"(no change {100 * d['no_change']['relative_error']:.2f}%) | `{f.with_suffix('.md').name}` |")
    for f in sorted(RESULTS.glob("featurize_speed_*.json")):
        d = _read(f)
        if _skip(f.name):
            continue
        best = max(d["results"], key=lambda r: r["ours_samples_s"])
        lines.append(f"| featurize ({f.stem.replace('featurize_speed_', '')}): ours / naive per-sample loop (target ≥ 10×) | – | "
                     f"{min(r['ours_vs_naive'] for r in d['results']):.1f}–{max(r['ours_vs_naive'] for r in d['results']):.1f}× "
                     f"(reference-style loop: {min(r['ours_vs_naive_reference'] for r in d['results']):.1f}–"
                     f"{max(r['ours_vs_naive_reference'] for r in d['results']):.1f}×) | `{f.with_suffix('.md').name}` |")
        lines.append(f"| featurize ({f.stem.replace('featurize_speed_', '')}): ours / plain batched forward+backward (target ≥ 0.5) | – | "
                     f"{min(r['ours_vs_plain'] for r in d['results']):.2f}–{max(r['ours_vs_plain'] for r in d['results']):.2f} "
                     f"(best {best['ours_samples_s']:.0f} samples/s at batch {best['batch_size']}) | `{f.with_suffix('.md').name}` |")
    for f in sorted(RESULTS.glob("ensemble_accuracy_*.json")):
        d = _read(f)
        if _skip(d["name"]):
            continue
        a = d["aggregate"]["methods"]
        ens = a["ensemble"]
        n = len(d["seeds"])

        def cmp(m: str) -> str:
            r = a[m]
            return (f"{100 * (ens['avg_accuracy_mean'] - r['avg_accuracy_mean']):+.1f} points "
                    f"({ens['avg_accuracy_mean']:.3f} ± {ens['avg_accuracy_std']:.3f} vs {r['avg_accuracy_mean']:.3f} ± {r['avg_accuracy_std']:.3f}, {n} seeds)")

        src = f"`{f.with_suffix('.md').name}`"
        kind = _adapter_kind(d)
        if "single_qlora" in a:
            lines.append(f"| ensemble vs single QLoRA adapter, avg accuracy ({d['name']}) | +10 points | {cmp('single_qlora')} | {src} |")
        if "single_adapter" in a:
            lines.append(f"| ensemble vs single {kind} adapter ({d['name']}) | – | {cmp('single_adapter')} | {src} |")
        for pr in d["aggregate"].get("paired", []):
            if not isinstance(pr["ci95"], list):
                continue
            target, what = PAIRED_ROWS.get((pr["a"], pr["b"]), (None, None))
            if what is not None:
                what = what.replace("single LoRA adapter", f"single {kind} adapter")
                lines.append(f"| {what}, paired by seed ({d['name']}) | {target} | {paired_points(pr)} | {src} |")
        if "mtl_ft" in a:
            r = a["mtl_ft"]
            lines.append(f"| ensemble vs MTL-FT: accuracy, compute ({d['name']}) | ≈ same accuracy, 45% less compute | "
                         f"{cmp('mtl_ft')}; {_less_or_more(ens['train_flops_mean'] / r['train_flops_mean'])} FLOPs | {src} |")
    for f in sorted(RESULTS.glob("training_sweep_*.json")):
        d = _read(f)
        if _skip(d["name"]):
            continue
        chosen = next(a for a in d["aggregate"] if a["point"] == d["chosen"])
        if len(chosen["seeds"]) > 1 and chosen.get("gain_ci95"):
            lo, hi = chosen["gain_ci95"]
            lines.append(f"| trained single adapter ({d['chosen']}, chosen on validation) vs untrained probed model θ*, "
                         f"paired by seed ({d['name']}) | > 0 | {points(chosen['gain_over_theta_star'][0])} points, "
                         f"95% interval [{points(lo)}, {points(hi)}], ahead in {chosen['seeds_ahead']}/"
                         f"{len(chosen['seeds'])} seeds | `{f.with_suffix('.md').name}` |")
    for f in sorted(RESULTS.glob("federated_*.json")):
        d = _read(f)
        if f.stem.startswith("federated_engines"):
            if not _skip(f.name):
                cells = "; ".join(f"{r['engine']} {r['fedavg_wall_s']:.1f} s" for r in d["rows"])
                lines.append(f"| FedAvg wall time by engine ({d['rows'][0]['clients']} clients, {d['rows'][0]['rounds']} rounds; "
                             f"same test loss) | – | {cells} | `{f.with_suffix('.md').name}` |")
            continue
        if _skip(d["name"]):
            continue
        c, rep = d["claims"], d["report"]
        src = f"`{f.with_suffix('.md').name}`"
        who = f"{rep['clients']} clients, {rep['model']} + {rep['adapter']}, {rep['rounds']} rounds"
        lines.append(f"| federated: ensemble test loss vs single FedAvg adapter ({who}) | ≥ 9% lower | "
                     f"{c['ensemble_vs_fedavg_pct']:+.1f}% | {src} |")
        ratio, vs = c["ensemble_flops_vs_mtl_ft"], c["ensemble_vs_mtl_ft_pct"]
        if ratio == ratio and vs == vs:  # MTL-FT was run
            lines.append(f"| federated: ensemble computation vs MTL-FT, test loss vs MTL-FT ({who}) | 90% less, comparable | "
                         f"{_less_or_more(ratio)}, {vs:+.1f}% | {src} |")
        else:
            lines.append(f"| federated: ensemble computation vs MTL-FT, test loss vs MTL-FT ({who}) | 90% less, comparable | "
                         f"not measured (MTL-FT not in this run) | {src} |")
    for f in sorted(RESULTS.glob("affinity_planted*.json")):
        if _skip(f.name):
            continue
        rows = _read(f)["rows"]
        for kind in dict.fromkeys(r["affinity"] for r in rows):
            for suite_set in dict.fromkeys(r.get("set", "design") for r in rows):
                sub = [r for r in rows if r["affinity"] == kind and r.get("set", "design") == suite_set]
                if not sub:
                    continue
                hits = sum(r["ari_chosen_m"] >= 0.8 for r in sub)
                mean = sum(r["ari_chosen_m"] for r in sub) / len(sub)
                true_m = sum(r["ari_true_m"] for r in sub) / len(sub)
                feats = "adapter" if f.stem.endswith("_adapter") else "full_rank" if f.stem.endswith("_full_rank") else "default"
                lines.append(f"| parts of one real dataset grouped together, affinity `{kind}`, features `{feats}`, {suite_set} suites ({len(sub)} "
                             f"suite × seed runs; target ARI ≥ 0.8, m automatic) | – | mean ARI {mean:.2f} ({hits}/{len(sub)} ≥ 0.8); "
                             f"at the true m {true_m:.2f} | `{f.with_suffix('.md').name}` |")
    sm = load("select_m")
    if sm is not None:
        for coll in dict.fromkeys(r["collection"] for r in sm["rows"]):
            sub = [r for r in sm["rows"] if r["collection"] == coll]
            cells = ", ".join(f"{rule} {sum(r[rule]['ari'] for r in sub) / len(sub):.2f}"
                              for rule in ("auto", "eigengap", "eigengap_raw", "heldout") if all(rule in r for r in sub))
            lines.append(f"| choosing m, {coll} ({len(sub)} runs): mean ARI per `cluster.select_m` rule | – | {cells} | `select_m.md` |")
    for f in sorted(RESULTS.glob("affinity_scale*.json")):
        if _skip(f.name):
            continue
        d = _read(f)
        for r in d["rows"]:
            if r["n"] >= 100:
                rule = r.get("select_m") or "heldout, the default then"
                lines.append(f"| planted families at n={r['n']} ({d['per_task']} samples/task), affinity `{r['affinity']}`, m by {rule} | – | "
                             f"m={r['m_chosen']}, ARI {r['ari_chosen_m']:.2f} (at m=4: {r['ari_true_m']:.2f}) | `{f.with_suffix('.md').name}` |")
        for what, e in d["exponents"].items():
            if e is not None:
                lines.append(f"| affinity scale ({d['per_task']} samples/task): time of {what} | linear | n^{e:.2f} | `{f.with_suffix('.md').name}` |")
    sc = load("scaling")
    if sc is not None:
        for what, fit in sc["fits"].items():
            lines.append(f"| scaling: {what} | – | {fit} | `scaling.md` |")
    for f in sorted(RESULTS.glob("sharpness_*.json")):
        d = _read(f)
        if _skip(d["name"]):
            continue
        s, src = d["summary"], f"`{f.with_suffix('.md').name}`"
        st = s["settings"]
        for task, p in s["per_task"].items():
            lines.append(f"| sharpness: rank with the smallest train–test gap ({task}, ranks {st['ranks']}) | 16 (of 4–256) | "
                         f"{p['best_rank_by_gap']} | {src} |")
            lines.append(f"| sharpness: Spearman(Hessian trace, gap) over variants ({task}) | positive | "
                         f"{_signed(p['spearman_trace_max_gap'])} (max over points), {_signed(p['spearman_trace_mean_gap'])} (mean) | {src} |")
            for v, c in p["ensemble_vs_single_total_rank"].items():
                lines.append(f"| sharpness: ensemble {v} vs one rank-{st['total_rank']} adapter ({task}): gap, trace | "
                             f"{'−44%, −74% (k=2)' if v.startswith('2x') else 'lower than k=2'} | "
                             f"{_pct(c['gap_change'])}, {_pct(c['trace_max_change'])} | {src} |")
    lines += ["", "## Latest results", ""]
    for md in sorted(RESULTS.glob("*.md")):
        if _skip(md.name):
            continue
        lines += [f"### {md.stem}", "", md.read_text().split("\n", 1)[1].strip(), ""]
        if md.with_suffix(".png").is_file():
            lines += [f"![{md.stem}](results/{md.with_suffix('.png').name})", ""]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
