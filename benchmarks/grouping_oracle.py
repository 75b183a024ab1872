"""How much can the grouping earn on a mix, and how close does each affinity's grouping come? (issue 38, item 4.)

Where ``benchmarks/positive_transfer.py`` trained an adapter on every non-empty subset of a mix's tasks (same seed,
adapter type and protocol as the ensemble), every partition of the tasks into groups can be scored without training:
task i is answered by the adapter trained on the block that holds i ("groups alone": no boosting, no combination
weights). For each seed and adapter type this ranks all partitions (15 for four tasks) and places on that ranking

* the partitions the ensemble benchmark's affinities chose (``benchmarks/decoder_ensemble.py``: first_order as the
  main method, then the transfer and paper variants), read from its results;
* per-task adapters (all singletons) and one adapter for all tasks;
* random groups' expectation: the mean over the partitions with as many groups as the ensemble's;
* the partition a user could pick with validation data (best mean validation accuracy, ties by validation loss),
  scored on test, and the best partition on test itself (an upper bound no method can select).

The gap between the affinity's partition and the validation-picked one is what a better grouping could earn here;
the gap between per-task adapters and the best partition says whether any sharing pays on this mix at all.

Pairwise, it also sets each affinity the ensemble benchmark estimated (``affinity.csv`` of its run folders
``runs/ensemble_<name>/seed<k>[_affinity_<kind>]``, symmetrised) against the real gain of pairing two tasks: the
drop of both tasks' loss on the pair's adapter against their own adapters, on validation and on test (Spearman
over the pairs).

Across seeds (where two or more seeds of one adapter type are complete), it asks whether the target itself
replicates: the Spearman correlation between two seeds' partition scores (test accuracy) and pair gains (test loss),
and where one seed's best partition ranks on the other. The data splits are the same in every seed (only the
training seed differs), so this is the training noise alone; an affinity cannot be expected to agree with a pair gain
better than two seeds of the real thing agree with each other.

    python benchmarks/grouping_oracle.py                      # decoder_glue_smollm2 (after positive_transfer.py)
    python benchmarks/grouping_oracle.py --name decoder_quick

Reads ``benchmarks/results/positive_transfer_<name>.json`` and ``ensemble_accuracy_<name>.json``; writes
``benchmarks/results/grouping_oracle_<name>.{json,md}``. No model runs (seconds).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RESULTS, RUNS, machine_info, paired_stats, write_results  # noqa: E402,I001

METRICS = ("val_acc", "val_loss", "test_acc", "test_loss")


def partitions(items: list[str]):
    """Every set partition of ``items`` (as a list of blocks, each in ``items``' order)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in partitions(rest):
        for k in range(len(part)):
            yield part[:k] + [[first, *part[k]]] + part[k + 1:]
        yield [[first], *part]


def canonical(blocks) -> tuple:
    return tuple(sorted(tuple(sorted(b)) for b in blocks))


def score_partitions(rows: list[dict], tasks: list[str]) -> list[dict] | None:
    """Each partition's mean per-task metrics, or None when some block's adapter is missing."""
    by = {(frozenset(r["subset"]), r["task"]): r for r in rows}
    out = []
    for blocks in partitions(list(tasks)):
        vals = {m: [] for m in METRICS}
        for b in blocks:
            for t in b:
                r = by.get((frozenset(b), t))
                if r is None:
                    return None
                for m in METRICS:
                    vals[m].append(r[m])
        out.append({"partition": canonical(blocks), "m": len(blocks), **{m: float(np.mean(v)) for m, v in vals.items()}})
    return out


def pair_gains(rows: list[dict], tasks: list[str], split: str) -> dict[tuple[str, str], float]:
    """(i, j) → loss_i({i}) + loss_j({j}) − loss_i({i,j}) − loss_j({i,j}) on ``split``: what pairing gains."""
    by = {(frozenset(r["subset"]), r["task"]): r[f"{split}_loss"] for r in rows}
    out = {}
    for a, b in itertools.combinations(tasks, 2):
        pair = frozenset((a, b))
        need = [(frozenset([a]), a), (frozenset([b]), b), (pair, a), (pair, b)]
        if all(k in by for k in need):
            out[(a, b)] = by[need[0]] + by[need[1]] - by[need[2]] - by[need[3]]
    return out


def read_affinities(name: str, seed: int, kinds: list[str]) -> dict[str, dict[frozenset, float]]:
    """Symmetrised off-diagonal affinity entries of the ensemble benchmark's run folders for ``seed``."""
    import pandas as pd

    out = {}
    for kind in kinds:
        folder = RUNS / f"ensemble_{name}" / (f"seed{seed}" if kind == "first_order" else f"seed{seed}_affinity_{kind}")
        path = folder / "affinity.csv"
        if not path.is_file():
            continue
        A = pd.read_csv(path, index_col=0)
        out[kind] = {frozenset((a, b)): float(A.loc[a, b] + A.loc[b, a]) / 2
                     for a, b in itertools.combinations(list(A.index), 2)}
    return out


def m_rule_partitions(name: str, seed: int) -> dict[str, tuple]:
    """The partitions ``num_groups: auto`` gives under each ``cluster.select_m`` rule on the first-order affinity
    the seed's run folder stored (its two halves for ``heldout``), with the run's local scaling: no model runs."""
    import pandas as pd

    from elora_ray.cluster.select import cluster_tasks

    folder = RUNS / f"ensemble_{name}" / f"seed{seed}"
    paths = [folder / f for f in ("affinity.csv", "affinity_half_a.csv", "affinity_half_b.csv")]
    if not all(p.is_file() for p in paths) or not (folder / "groups.json").is_file():
        return {}
    A, a, b = (pd.read_csv(p, index_col=0) for p in paths)
    scaling = json.loads((folder / "groups.json").read_text()).get("local_scaling")
    out = {}
    for rule in ("heldout", "eigengap", "density"):
        res = cluster_tasks(A.values, list(A.index), num_groups="auto", halves=(a.values, b.values), select_m=rule,
                            local_scaling=scaling)
        out[f"first_order, m auto by {rule}"] = canonical(res.groups)
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def analyse(pt: dict, ens: dict | None, name: str | None = None) -> dict:
    tasks = list(pt["tasks"])
    seeds, types = sorted({r["seed"] for r in pt["rows"]}), sorted({r["type"] for r in pt["rows"]})
    chosen: dict[int, dict[str, tuple]] = {}
    if ens:
        for seed, groups in zip(ens.get("seeds", []), ens.get("groups", [])):
            chosen.setdefault(seed, {})["first_order (ensemble)"] = canonical(groups)
        for kind, per_seed in (ens.get("variant_groups") or {}).items():
            for seed, groups in zip(ens.get("seeds", []), per_seed):
                chosen.setdefault(seed, {})[kind] = canonical(groups)
    cases = []
    for seed in seeds:
        for kind in types:
            scored = score_partitions([r for r in pt["rows"] if r["seed"] == seed and r["type"] == kind], tasks)
            if scored is None:
                continue
            by_test = sorted(scored, key=lambda p: -p["test_acc"])
            rank = {p["partition"]: i + 1 for i, p in enumerate(by_test)}
            picked = max(scored, key=lambda p: (p["val_acc"], -p["val_loss"]))
            entries = {"per-task adapters": canonical([[t] for t in tasks]), "one adapter": canonical([tasks]),
                       "picked on validation": picked["partition"], "best on test": by_test[0]["partition"],
                       **chosen.get(seed, {}), **(m_rule_partitions(name, seed) if name else {})}
            find = {p["partition"]: p for p in scored}
            m_ens = len(chosen.get(seed, {}).get("first_order (ensemble)", ())) or 2
            same_m = [p for p in scored if p["m"] == m_ens]
            rows = [{"what": name, "partition": [list(b) for b in part], "rank_on_test": rank[part],
                     **{m: find[part][m] for m in METRICS}} for name, part in entries.items()]
            rows.append({"what": f"random groups (mean of the {len(same_m)} partitions into {m_ens})", "partition": None,
                         "rank_on_test": None, **{m: float(np.mean([p[m] for p in same_m])) for m in METRICS}})
            seed_rows = [r for r in pt["rows"] if r["seed"] == seed and r["type"] == kind]
            gains = {split: pair_gains(seed_rows, tasks, split) for split in ("val", "test")}
            affinities = read_affinities(name, seed, ["first_order", "transfer", "paper"]) if name else {}
            pairs = [{"pair": list(p), "gain_val": gains["val"][p], "gain_test": gains["test"].get(p),
                      **{f"affinity_{k}": v.get(frozenset(p)) for k, v in affinities.items()}} for p in gains["val"]]
            agreement = {k: {split: spearman([pr[f"affinity_{k}"] for pr in pairs if pr[f"affinity_{k}"] is not None],
                                             [pr[f"gain_{split}"] for pr in pairs if pr[f"affinity_{k}"] is not None])
                             for split in ("val", "test")} for k in affinities}
            cases.append({"seed": seed, "type": kind, "partitions": len(scored), "rows": rows, "pairs": pairs,
                          "spearman": agreement,
                          "all": [{**p, "partition": [list(b) for b in p["partition"]]} for p in by_test]})
    return {"tasks": tasks, "cases": cases, "across_seeds": across_seeds(cases), "over_seeds": over_seeds(cases)}


def _random_row(table: dict[str, dict]) -> dict:
    return next(v for k, v in table.items() if k.startswith("random groups"))


def over_seeds(cases: list[dict]) -> list[dict]:
    """Per adapter type with two or more seeds: each grouping's test accuracy (groups alone) minus random groups'
    expectation and minus one adapter for all tasks, paired by seed (95% t-interval)."""
    out = []
    for kind in sorted({c["type"] for c in cases}):
        per_seed = [c for c in sorted(cases, key=lambda c: c["seed"]) if c["type"] == kind]
        if len(per_seed) < 2:
            continue
        tables = [{r["what"]: r for r in c["rows"]} for c in per_seed]
        whats = [w for w in tables[0] if not w.startswith("random groups") and all(w in t for t in tables)]
        for what in whats:
            acc = [t[what]["test_acc"] for t in tables]
            out.append({"type": kind, "what": what, "seeds": [c["seed"] for c in per_seed],
                        "test_acc": float(np.mean(acc)),
                        "minus_random_groups": paired_stats([a - _random_row(t)["test_acc"] for a, t in zip(acc, tables)]),
                        "minus_one_adapter": paired_stats([a - t["one adapter"]["test_acc"] for a, t in zip(acc, tables)])})
    return out


def across_seeds(cases: list[dict]) -> list[dict]:
    """For each adapter type and pair of complete seeds: does the ranking of partitions and of pair gains replicate?"""
    out = []
    for kind in sorted({c["type"] for c in cases}):
        by_seed = {c["seed"]: c for c in cases if c["type"] == kind}
        for s, t in itertools.combinations(sorted(by_seed), 2):
            a = {tuple(map(tuple, p["partition"])): p for p in by_seed[s]["all"]}
            b = {tuple(map(tuple, p["partition"])): p for p in by_seed[t]["all"]}
            common = sorted(set(a) & set(b))
            rank_b = {p: i + 1 for i, p in enumerate(sorted(common, key=lambda p: -b[p]["test_acc"]))}
            rank_a = {p: i + 1 for i, p in enumerate(sorted(common, key=lambda p: -a[p]["test_acc"]))}
            best_a = min(common, key=lambda p: rank_a[p])
            best_b = min(common, key=lambda p: rank_b[p])
            ga = {tuple(p["pair"]): p["gain_test"] for p in by_seed[s]["pairs"] if p["gain_test"] is not None}
            gb = {tuple(p["pair"]): p["gain_test"] for p in by_seed[t]["pairs"] if p["gain_test"] is not None}
            pairs = sorted(set(ga) & set(gb))
            out.append({"type": kind, "seeds": [s, t], "partitions": len(common),
                        "spearman_partitions_test_acc": spearman([a[p]["test_acc"] for p in common],
                                                                 [b[p]["test_acc"] for p in common]),
                        "spearman_pair_gains_test_loss": spearman([ga[p] for p in pairs], [gb[p] for p in pairs]),
                        "pairs": len(pairs),
                        "same_sign_pair_gains": sum((ga[p] > 0) == (gb[p] > 0) for p in pairs),
                        "best_of_first_ranks_on_second": rank_b[best_a], "best_of_second_ranks_on_first": rank_a[best_b]})
    return out


def markdown(name: str, data: dict) -> str:
    lines = [f"# Grouping headroom on `{name}`: every partition scored by the subset adapters", "",
             "Task i is answered by the adapter trained on its block (groups alone, no boosting or weights); the "
             "means are over tasks. Rank: among all partitions by test accuracy (1 = best).", ""]
    if not data["cases"]:
        lines.append("No seed and adapter type has an adapter for every subset yet (run `positive_transfer.py`).")
    for c in data["cases"]:
        lines += [f"## seed {c['seed']}, {c['type']} ({c['partitions']} partitions)", "",
                  "| grouping | partition | rank on test | test acc | validation acc | test loss | validation loss |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in c["rows"]:
            part = " \\| ".join("+".join(b) for b in r["partition"]) if r["partition"] else "–"
            rank = r["rank_on_test"] if r["rank_on_test"] is not None else "–"
            lines.append(f"| {r['what']} | {part} | {rank} | {r['test_acc']:.3f} | {r['val_acc']:.3f} | "
                         f"{r['test_loss']:.3f} | {r['val_loss']:.3f} |")
        lines.append("")
        if c.get("pairs"):
            kinds = list(c["spearman"])
            lines += ["Pairs: the real gain of sharing one adapter (both tasks' loss on their own adapters minus on the "
                      "pair's; > 0: pairing helps) next to each affinity (symmetrised):", "",
                      "| pair | gain, validation loss | gain, test loss | " + " | ".join(kinds) + " |",
                      "|---|---:|---:|" + "---:|" * len(kinds)]
            for pr in c["pairs"]:
                cells = " | ".join("–" if pr[f"affinity_{k}"] is None else f"{pr[f'affinity_{k}']:+.4f}" for k in kinds)
                test = "–" if pr["gain_test"] is None else f"{pr['gain_test']:+.3f}"
                lines.append(f"| {'+'.join(pr['pair'])} | {pr['gain_val']:+.3f} | {test} | {cells} |")
            if kinds:
                def rho(x):
                    return "n/a" if x is None else f"{x:+.2f}"

                lines += ["", "Spearman of each affinity with the real gain over the pairs: " + "; ".join(
                    f"{k}: {rho(c['spearman'][k]['val'])} (validation), {rho(c['spearman'][k]['test'])} (test)" for k in kinds)
                    + "."]
            lines.append("")
    if data.get("over_seeds"):
        def diff(p):
            ci = f" [{100 * p['ci95'][0]:+.2f}, {100 * p['ci95'][1]:+.2f}]" if p["ci95"] else ""
            return f"{100 * p['mean']:+.2f}{ci}, {p['a_ahead']}/{p['seeds']}"

        lines += ["## Over seeds: each grouping against random groups and one adapter", "",
                  "Groups alone (no boosting or weights), test accuracy in points, paired by seed: mean [95% t-interval], "
                  "seeds ahead. The affinities' partitions are the ensemble benchmark's (computed from its LoRA "
                  "features), also where the adapters scored are QLoRA ones.", "",
                  "| adapter | seeds | grouping | test acc | − random groups | − one adapter |", "|---|---|---|---:|---:|---:|"]
        for r in data["over_seeds"]:
            lines.append(f"| {r['type']} | {', '.join(map(str, r['seeds']))} | {r['what']} | {r['test_acc']:.3f} | "
                         f"{diff(r['minus_random_groups'])} | {'–' if r['what'] == 'one adapter' else diff(r['minus_one_adapter'])} |")
        lines.append("")
    if data.get("across_seeds"):
        def num(x):
            return "n/a" if x is None else f"{x:+.2f}"

        lines += ["## Does the target replicate across seeds?", "",
                  "Same data splits, another training seed. Spearman between the two seeds' scores of every partition "
                  "(test accuracy) and of every pair's gain (test loss); where each seed's best partition ranks on the "
                  "other seed. An affinity cannot be expected to agree with the real gains better than this.", "",
                  "| adapter | seeds | partitions: Spearman | pair gains: Spearman | pair gains of the same sign | "
                  "best of the first, rank on the second | best of the second, rank on the first |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in data["across_seeds"]:
            lines.append(f"| {r['type']} | {r['seeds'][0]}, {r['seeds'][1]} | {num(r['spearman_partitions_test_acc'])} | "
                         f"{num(r['spearman_pair_gains_test_loss'])} | {r['same_sign_pair_gains']} of {r['pairs']} | "
                         f"{r['best_of_first_ranks_on_second']} of {r['partitions']} | "
                         f"{r['best_of_second_ranks_on_first']} of {r['partitions']} |")
        lines.append("")
    m = data["machine"]
    lines.append(f"Machine: {m['cpu']} ({m['cores']} cores), {m['date']}. Inputs: {', '.join(data['inputs'])}. "
                 f"Command: `{data['command']}`.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="decoder_glue_smollm2")
    args = ap.parse_args(argv)
    pt_path = RESULTS / f"positive_transfer_{args.name}.json"
    if not pt_path.is_file():
        print(f"{pt_path} not found: run benchmarks/positive_transfer.py first", file=sys.stderr)
        return 2
    ens_path = RESULTS / f"ensemble_accuracy_{args.name}.json"
    ens = json.loads(ens_path.read_text()) if ens_path.is_file() else None
    data = analyse(json.loads(pt_path.read_text()), ens, args.name)
    data.update(machine=machine_info(), command=f"python benchmarks/grouping_oracle.py --name {args.name}",
                inputs=[p.name for p in (pt_path, ens_path) if p.is_file()])
    text = markdown(args.name, data)
    write_results(f"grouping_oracle_{args.name}", data, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
