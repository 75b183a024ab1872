"""Stage 2 — estimate: k subset regressions as Ray tasks, then the affinity matrix.

Features of every task (train: fit, validation: evaluate) are put into the Ray object store
once; each Ray task solves a batch of subsets against that single shared copy (numpy arrays
are read zero-copy by workers on the same node). Writes under the run directory::

    estimate/subsets.json        the seeded subsets (task names)
    estimate/chunks/*.parquet    results per batch of subsets (resume unit): chunk-* the members'
                                 validation scores, gains-* every task's held-out training-loss gains
    estimate/results.parquet     subset_id, members, task, loss, accuracy, loss0, accuracy0, train_loss
    affinity.csv                 the affinity used by `cluster` (task names on both axes):
                                 transfer / first_order: normalised transfer (transfer.py), plus
                                 affinity_half_a.csv / affinity_half_b.csv from the sample halves;
                                 paper: row-centred eq. 1, plus affinity_raw.csv, affinity_counts.csv
    affinity.json                kind, definition, orientation, coverage
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import log_expit
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from ..config import RunConfig
from ..errors import ConfigError, DataError
from ..featurize.store import read_features, read_manifest
from ..io import fingerprint, write_json, write_parquet, write_text
from ..layout import EST_DIR, RunLayout
from ..raysession import cluster_cpus, ensure_ray
from .affinity import Affinity, affinity_matrix
from .calibration import calibration_constant, keep_in_run, margin_noise, resolve_l2
from .subsets import default_num_subsets, default_subset_size, design_stats, sample_subsets
from .surrogate import evaluate, fit_surrogate
from .transfer import first_order_transfer, fit_pairwise, normalise_transfer, sample_halves

log = logging.getLogger(__name__)


def solve_chunk(features: dict, names: list[str], subsets: list[tuple[int, tuple[int, ...]]], l2: float | dict,
                max_iter: int, halves: dict | None = None, margin_noise: float = 0.0) -> tuple[list[dict], list[dict]]:
    """Fit the surrogate on each subset's training features.

    Returns (rows, gains): ``rows`` score every member task on its validation samples (the
    paper's f_i(S), used for ``affinity: paper`` and reported; accuracy is the expected accuracy under
    ``margin_noise``, see :func:`.surrogate.evaluate`); with ``halves`` (task → 0/1 per
    training sample), ``gains`` has one entry per subset with the training-loss gain of *every*
    task on each half (held out for tasks outside the subset; see ``transfer.py``).
    ``features[name] = (g_train, h0_train, g_val, h0_val)``. Runs inside a Ray task (or locally);
    pure numpy, one thread.
    """
    rows, gains = [], []
    if halves is not None:  # every task's training samples at once: losses per task (and half) by bincount
        g_all = np.concatenate([np.asarray(features[t][0], dtype=np.float64) for t in names])
        h_all = np.concatenate([np.asarray(features[t][1], dtype=np.float64) for t in names])
        task_of = np.concatenate([np.full(len(features[t][1]), i) for i, t in enumerate(names)])
        half_all = np.concatenate([np.asarray(halves[t]) for t in names])
        slot = 2 * task_of + half_all
        sizes = np.bincount(task_of, minlength=len(names))
        half_sizes = np.bincount(slot, minlength=2 * len(names)).reshape(-1, 2)

        def task_losses(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            loss = -log_expit(h_all + g_all @ w)
            per_half = np.bincount(slot, weights=loss, minlength=2 * len(names)).reshape(-1, 2)
            return per_half.sum(1) / sizes, per_half / np.maximum(half_sizes, 1)

        base_all, base = task_losses(np.zeros(g_all.shape[1]))
    for sid, members in subsets:
        mnames = [names[i] for i in members]
        g = np.concatenate([features[m][0] for m in mnames])
        h0 = np.concatenate([features[m][1] for m in mnames])
        t0 = time.perf_counter()
        fit = fit_surrogate(g, h0, l2=resolve_l2(l2, len(h0)), max_iter=max_iter)
        solve_s = time.perf_counter() - t0
        for m in mnames:
            gv, hv = features[m][2], features[m][3]
            loss, acc = evaluate(gv, hv, fit.w, margin_noise)
            loss0, acc0 = evaluate(gv, hv, np.zeros_like(fit.w), margin_noise)
            tr_loss, _ = evaluate(features[m][0], features[m][1], fit.w)
            rows.append({
                "subset_id": sid, "members": mnames, "task": m, "loss": loss, "accuracy": acc, "loss0": loss0,
                "accuracy0": acc0, "train_loss": tr_loss, "n_train": int(len(h0)), "iterations": fit.iterations,
                "converged": fit.converged, "solve_s": solve_s, "w_norm": float(np.linalg.norm(fit.w)),
            })
        if halves is not None:
            after_all, _ = task_losses(fit.w)
            entry = {"subset_id": sid, "gain": (base_all - after_all).tolist()}
            # Two independent estimates: fit on half p of the subset's samples, score half p of every task.
            half_of = np.concatenate([halves[m] for m in mnames])
            for p in (0, 1):
                sel = half_of == p
                w = fit_surrogate(g[sel], h0[sel], l2=resolve_l2(l2, int(sel.sum())), max_iter=max_iter).w
                entry[f"gain{p}"] = (base[:, p] - task_losses(w)[1][:, p]).tolist()
            gains.append(entry)
    return rows, gains


def solve_subsets(features: dict, names: list[str], subsets: list[tuple[int, tuple[int, ...]]], l2: float | dict,
                  max_iter: int) -> list[dict]:
    """The per-member validation rows of :func:`solve_chunk` (the paper's f_i(S))."""
    return solve_chunk(features, names, subsets, l2, max_iter)[0]


def subset_plan(cfg: RunConfig, n: int) -> tuple[int, int]:
    """(k, subset size) for n tasks: the configured values, or the ``auto`` design."""
    e = cfg.estimate
    size = default_subset_size(n) if e.subset_size == "auto" else int(e.subset_size)
    k = default_num_subsets(n, size, e.appearances) if e.num_subsets == "auto" else int(e.num_subsets)
    return k, size


def l2_rule(cfg: RunConfig, run_dir: Path | None) -> tuple[float | dict, str]:
    """The surrogate's λ as passed to the solvers, and a description for the summary."""
    if cfg.estimate.l2 != "auto":
        return float(cfg.estimate.l2), f"fixed {cfg.estimate.l2:g}"
    c, source = calibration_constant(cfg, run_dir)
    if run_dir is not None:
        keep_in_run(cfg, run_dir, source)
    t = cfg.train
    rule = {"constant": c, "lr": t.lr, "epochs": t.epochs, "batch_size": t.batch_size}
    return rule, f"auto: {c:g}·{t.batch_size}/(2·{t.lr:g}·{t.epochs:g}·N_S), c from {source}"


def estimate_fingerprint(cfg: RunConfig, features_fp: str, l2: float | dict | None = None, margin_noise: float = 0.0) -> str:
    e = cfg.estimate
    part = {"features": features_fp, "num_subsets": e.num_subsets, "subset_size": e.subset_size, "l2": l2 if l2 is not None else e.l2,
            "appearances": e.appearances, "affinity": e.affinity, "metric": e.metric,
            "max_iter": e.max_iter, "seed": e.seed if e.seed is not None else cfg.seed, "version": 5}
    if margin_noise:  # only when it applies, so earlier runs keep their fingerprints
        part["margin_noise"] = margin_noise
    return fingerprint(part)


def load_estimation_features(run_dir: Path) -> tuple[list[str], dict]:
    names, feats, _ = load_estimation_features_with_ids(run_dir)
    return names, feats


def load_estimation_features_with_ids(run_dir: Path) -> tuple[list[str], dict, dict]:
    """(names, features, training sample ids per task)."""
    train = read_features(run_dir, "train")
    val = read_features(run_dir, "validation")
    names = sorted(train)
    missing = [n for n in names if n not in val or len(val[n]) == 0]
    if missing:
        raise DataError(f"tasks without validation samples, needed to evaluate subset estimates: {missing}")
    feats = {n: (train[n].grad, train[n].h0, val[n].grad, val[n].h0) for n in names}
    return names, feats, {n: train[n].sample_ids for n in names}


def estimate(cfg: RunConfig, run_dir: Path, force: bool = False, progress: bool = True) -> dict:
    feat_manifest = read_manifest(run_dir)
    e = cfg.estimate
    l2, l2_text = l2_rule(cfg, run_dir)
    sigma = margin_noise(cfg, run_dir)[0] if e.affinity != "first_order" else 0.0  # no subsets, no accuracies
    fp = estimate_fingerprint(cfg, feat_manifest["fingerprint"], l2, sigma)
    n = len(feat_manifest["splits"]["train"])
    k, size = subset_plan(cfg, n)
    if size > n:  # checked before anything in the run directory is touched
        raise ConfigError(f"estimate.subset_size={size} exceeds the number of tasks ({n})")
    out = run_dir / EST_DIR
    state = out / "state.json"
    current = state.is_file() and json.loads(state.read_text()).get("fingerprint") == fp and not force
    if current and (out / "summary.json").is_file() and RunLayout(run_dir).affinity.is_file():
        log.info("estimate: results complete in %s (fingerprint %s), skipping", out, fp)
        return json.loads((out / "summary.json").read_text())
    names, feats, ids = load_estimation_features_with_ids(run_dir)  # validated before anything in out/ is touched
    if out.is_symlink() and not current:  # a tune trial's view of its parent run: never recompute through it
        raise ConfigError(f"{out} links to {out.resolve()}, whose estimate does not match this configuration "
                          f"(fingerprint {fp}); rerun `elora estimate` on the parent run")
    if out.exists() and not current:
        shutil.rmtree(out)
    write_json(state, {"fingerprint": fp})
    t0 = time.perf_counter()
    seed = e.seed if e.seed is not None else cfg.seed
    halves = {t: sample_halves(ids[t], seed) for t in names}
    transfer = e.affinity == "transfer"
    solve_s, chunks, subsets = 0.0, [], []
    results = pd.DataFrame()
    if e.affinity != "first_order":
        subsets = sample_subsets(n, k, size, seed)
        write_json(out / "subsets.json", {"size": size, "seed": seed, "subsets": [[names[i] for i in s] for s in subsets]})
        results, gains, chunks, solve_s = _solve_all(cfg, out, feats, names, subsets, l2, halves if transfer else None, progress,
                                                     sigma)
    if e.affinity == "paper":
        aff = affinity_matrix(results, names, e.metric)
        write_affinity(run_dir, aff, e.metric)
        coverage = aff.coverage
        design = design_stats(n, subsets)
    else:
        if transfer:
            X = np.zeros((len(subsets), n))
            for r, s in enumerate(subsets):
                X[r, list(s)] = 1.0
            order = gains["subset_id"].to_numpy()
            g = np.stack(gains["gain"].map(np.asarray).to_numpy())
            g0 = np.stack(gains["gain0"].map(np.asarray).to_numpy())
            g1 = np.stack(gains["gain1"].map(np.asarray).to_numpy())
            Xo = X[order]
            full, half_a, half_b = (normalise_transfer(fit_pairwise(Xo, y)) for y in (g, g0, g1))
            design = design_stats(n, subsets)
            # The closed form as a check (milliseconds): how far the subset fits move away from first order.
            fo = first_order_transfer({t: (feats[t][0], feats[t][1]) for t in names}, halves, names)[0]
            iu = np.triu_indices(n, 1)
            if n > 2:
                design["agreement_with_first_order"] = {
                    "pearson": float(np.corrcoef(full[iu], fo[iu])[0, 1]),
                    "spearman": float(spearmanr(full[iu], fo[iu]).statistic),
                }
        else:
            train = {t: (feats[t][0], feats[t][1]) for t in names}
            full, half_a, half_b = first_order_transfer(train, halves, names)
            design = {}
        write_transfer_affinity(run_dir, names, full, half_a, half_b, e.affinity)
        coverage = 1.0
    summary = {
        "fingerprint": fp,
        "tasks": n,
        "affinity": e.affinity,
        "num_subsets": len(subsets),
        "subset_size": size if subsets else 0,
        "l2": l2_text,
        "margin_noise": sigma,
        "ray_tasks": len(chunks),
        "metric": e.metric if e.affinity == "paper" else "loss",
        "coverage": coverage,
        **design,
        "mean_pair_count": design.get("cooccurrences_per_pair", {}).get("mean", 0.0),
        "converged_fraction": float(results.drop_duplicates("subset_id")["converged"].mean()) if len(results) else 1.0,
        "mean_relative_loss_change": float(((results["loss"] - results["loss0"]) / results["loss0"]).mean()) if len(results) else 0.0,
        "solve_seconds": round(solve_s, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if coverage < 1.0:
        log.warning(
            "estimate: only %.0f%% of task pairs appear together in a subset; raise estimate.num_subsets "
            "or estimate.subset_size for a complete affinity matrix", 100 * coverage,
        )
    write_json(out / "summary.json", summary)
    log.info("estimate: %s affinity, %d subsets of %d tasks in %.1f s (%d Ray tasks); λ %s",
             e.affinity, len(subsets), size, summary["seconds"], len(chunks), l2_text)
    return summary


def _solve_all(cfg: RunConfig, out: Path, feats: dict, names: list[str], subsets: list, l2: float | dict,
               halves: dict | None, progress: bool, margin_noise: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame, list, float]:
    """Solve every subset as Ray tasks, one chunk file (+ gains file) per batch; resumable."""
    ensure_ray(cfg.ray)
    import ray

    e = cfg.estimate
    cpus = cluster_cpus()
    per = max(1, -(-len(subsets) // (4 * cpus))) if e.subsets_per_task == "auto" else int(e.subsets_per_task)
    chunks = [list(enumerate(subsets))[i : i + per] for i in range(0, len(subsets), per)]
    chunk_dir = out / "chunks"

    def done(c: int) -> bool:
        return (chunk_dir / f"chunk-{c:05d}.parquet").is_file() and (halves is None or (chunk_dir / f"gains-{c:05d}.parquet").is_file())

    todo = [(c, ch) for c, ch in enumerate(chunks) if not done(c)]
    if len(todo) < len(chunks):
        log.info("estimate: resuming, %d of %d chunks already solved", len(chunks) - len(todo), len(chunks))
    t_solve = time.perf_counter()
    if todo:
        ref = ray.put(feats)  # one copy in the object store, shared by every task
        halves_ref = ray.put(halves)
        remote = ray.remote(num_cpus=1)(solve_chunk)
        pending = {remote.remote(ref, names, ch, l2, e.max_iter, halves_ref, margin_noise): c for c, ch in todo}
        with tqdm(total=sum(len(ch) for _, ch in todo), desc="estimate: subset regressions", unit="subset", disable=not progress) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for r in ready:
                    c = pending.pop(r)
                    rows, gains = ray.get(r)
                    if halves is not None:  # gains first: a chunk counts as done only when its rows exist
                        write_parquet(chunk_dir / f"gains-{c:05d}.parquet", _rows_table(gains))
                    write_parquet(chunk_dir / f"chunk-{c:05d}.parquet", _rows_table(rows))
                    bar.update(len(chunks[c]))
    solve_s = time.perf_counter() - t_solve
    results = pd.concat([pd.read_parquet(chunk_dir / f"chunk-{c:05d}.parquet") for c in range(len(chunks))], ignore_index=True)
    results["members"] = results["members"].map(list)
    write_parquet(out / "results.parquet", _rows_table(results.to_dict("records")))
    gains = pd.DataFrame()
    if halves is not None:
        gains = pd.concat([pd.read_parquet(chunk_dir / f"gains-{c:05d}.parquet") for c in range(len(chunks))], ignore_index=True)
    return results, gains, chunks, solve_s


def _rows_table(rows: list[dict]):
    import pyarrow as pa

    return pa.Table.from_pylist(rows)


def write_affinity(run_dir: Path, aff: Affinity, metric: str) -> None:
    layout = RunLayout(run_dir)
    for path in layout.affinity_halves:  # halves belong to the transfer / first-order affinity only
        path.unlink(missing_ok=True)
    write_text(layout.affinity, aff.frame("centered").to_csv(float_format="%.6g"))
    write_text(layout.affinity_raw, aff.frame("raw").to_csv(float_format="%.6g"))
    write_text(layout.affinity_counts, aff.frame("counts").to_csv())
    write_json(layout.affinity_meta, {
        "metric": metric,
        "orientation": "larger is better transfer",
        "definition": "affinity.csv: A_ij = T_ij - T_ii, T_ij = mean over sampled subsets S containing i and j of "
                      + ("-loss_i(S)" if metric == "loss" else "accuracy_i(S)")
                      + " (linearised estimate on validation); A_ii = 0; uncovered pairs 0",
        "coverage": aff.coverage,
        "tasks": aff.names,
    })


def write_transfer_affinity(run_dir: Path, names: list[str], full: np.ndarray, half_a: np.ndarray, half_b: np.ndarray,
                            kind: str) -> None:
    frame = lambda M: pd.DataFrame(M, index=names, columns=names).to_csv(float_format="%.6g")  # noqa: E731
    layout = RunLayout(run_dir)
    for path in (layout.affinity_raw, layout.affinity_counts):  # written by the paper mode only
        path.unlink(missing_ok=True)
    write_text(layout.affinity_halves[0], frame(half_a))
    write_text(layout.affinity_halves[1], frame(half_b))
    write_text(layout.affinity, frame(full))
    write_json(layout.affinity_meta, {
        "kind": kind,
        "metric": "loss",
        "orientation": "larger is better transfer",
        "definition": ("affinity.csv: normalised transfer Ã_ij = sqrt(r_ij r_ji), r_ij = a_ij / a_ii (sign kept; the mean when signs differ), Ã_ii = 1, where a_ij is "
                       + ("the coefficient of j in the pairwise additive model of task i's held-out training-loss gain "
                          "after each subset fit" if kind == "transfer" else
                          "the first-order gain ⟨G_i, n_j G_j⟩ of i's training loss from a step on j's summed loss")
                       + "; affinity_half_a/b.csv: the same from the two halves of every task's samples (for m selection)"),
        "coverage": 1.0,
        "tasks": names,
    })
