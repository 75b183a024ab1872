"""Stage 2 — estimate: k subset regressions as Ray tasks, then the affinity matrix.

Features of every task (train: fit, validation: evaluate) are put into the Ray object store
once; each Ray task solves a batch of subsets against that single shared copy (numpy arrays
are read zero-copy by workers on the same node). Writes under the run directory::

    estimate/subsets.json        the seeded subsets (task names)
    estimate/chunks/*.parquet    results per batch of subsets (resume unit)
    estimate/results.parquet     subset_id, members, task, loss, accuracy, loss0, accuracy0, train_loss
    affinity.csv                 A (row-centred T) with task names, used by `cluster`
    affinity_raw.csv, affinity_counts.csv, affinity.json (metric, coverage, orientation)
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..config import RunConfig
from ..errors import ConfigError, DataError
from ..featurize.store import read_features, read_manifest
from ..io import write_json, write_parquet, write_text
from ..raysession import cluster_cpus, ensure_ray
from .affinity import Affinity, affinity_matrix
from .subsets import default_subset_size, sample_subsets
from .surrogate import evaluate, fit_surrogate

log = logging.getLogger(__name__)
EST_DIR = "estimate"


def solve_subsets(features: dict, names: list[str], subsets: list[tuple[int, tuple[int, ...]]], l2: float, max_iter: int) -> list[dict]:
    """Fit the surrogate on each subset's training features; evaluate every member task.

    ``features[name] = (g_train, h0_train, g_val, h0_val)``. Runs inside a Ray task (or
    locally); pure numpy, one thread.
    """
    rows = []
    for sid, members in subsets:
        mnames = [names[i] for i in members]
        g = np.concatenate([features[m][0] for m in mnames])
        h0 = np.concatenate([features[m][1] for m in mnames])
        t0 = time.perf_counter()
        fit = fit_surrogate(g, h0, l2=l2, max_iter=max_iter)
        solve_s = time.perf_counter() - t0
        for m in mnames:
            gv, hv = features[m][2], features[m][3]
            loss, acc = evaluate(gv, hv, fit.w)
            loss0, acc0 = evaluate(gv, hv, np.zeros_like(fit.w))
            tr_loss, _ = evaluate(features[m][0], features[m][1], fit.w)
            rows.append({
                "subset_id": sid, "members": mnames, "task": m, "loss": loss, "accuracy": acc, "loss0": loss0,
                "accuracy0": acc0, "train_loss": tr_loss, "n_train": int(len(h0)), "iterations": fit.iterations,
                "converged": fit.converged, "solve_s": solve_s, "w_norm": float(np.linalg.norm(fit.w)),
            })
    return rows


def estimate_fingerprint(cfg: RunConfig, features_fp: str) -> str:
    e = cfg.estimate
    part = {"features": features_fp, "num_subsets": e.num_subsets, "subset_size": e.subset_size, "l2": e.l2,
            "max_iter": e.max_iter, "seed": e.seed if e.seed is not None else cfg.seed, "version": 1}
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]


def load_estimation_features(run_dir: Path) -> tuple[list[str], dict]:
    train = read_features(run_dir, "train")
    val = read_features(run_dir, "validation")
    names = sorted(train)
    missing = [n for n in names if n not in val or len(val[n]) == 0]
    if missing:
        raise DataError(f"tasks without validation samples, needed to evaluate subset estimates: {missing}")
    return names, {n: (train[n].grad, train[n].h0, val[n].grad, val[n].h0) for n in names}


def estimate(cfg: RunConfig, run_dir: Path, force: bool = False, progress: bool = True) -> dict:
    feat_manifest = read_manifest(run_dir)
    fp = estimate_fingerprint(cfg, feat_manifest["fingerprint"])
    e = cfg.estimate
    n = len(feat_manifest["splits"]["train"])
    size = default_subset_size(n) if e.subset_size == "auto" else int(e.subset_size)
    if size > n:  # checked before anything in the run directory is touched
        raise ConfigError(f"estimate.subset_size={size} exceeds the number of tasks ({n})")
    out = run_dir / EST_DIR
    state = out / "state.json"
    current = state.is_file() and json.loads(state.read_text()).get("fingerprint") == fp and not force
    if current and (out / "summary.json").is_file() and (run_dir / "affinity.csv").is_file():
        log.info("estimate: results complete in %s (fingerprint %s), skipping", out, fp)
        return json.loads((out / "summary.json").read_text())
    names, feats = load_estimation_features(run_dir)  # validated before anything in out/ is touched
    if out.exists() and not current:
        shutil.rmtree(out)
    write_json(state, {"fingerprint": fp})
    t0 = time.perf_counter()
    seed = e.seed if e.seed is not None else cfg.seed
    subsets = sample_subsets(n, e.num_subsets, size, seed)
    write_json(out / "subsets.json", {"size": size, "seed": seed, "subsets": [[names[i] for i in s] for s in subsets]})

    ensure_ray(cfg.ray)
    import ray

    cpus = cluster_cpus()
    per = max(1, -(-len(subsets) // (4 * cpus))) if e.subsets_per_task == "auto" else int(e.subsets_per_task)
    chunks = [list(enumerate(subsets))[i : i + per] for i in range(0, len(subsets), per)]
    chunk_dir = out / "chunks"
    todo = [(c, ch) for c, ch in enumerate(chunks) if not (chunk_dir / f"chunk-{c:05d}.parquet").is_file()]
    if len(todo) < len(chunks):
        log.info("estimate: resuming, %d of %d chunks already solved", len(chunks) - len(todo), len(chunks))
    t_solve = time.perf_counter()
    if todo:
        ref = ray.put(feats)  # one copy in the object store, shared by every task
        remote = ray.remote(num_cpus=1)(solve_subsets)
        pending = {remote.remote(ref, names, ch, e.l2, e.max_iter): c for c, ch in todo}
        with tqdm(total=sum(len(ch) for _, ch in todo), desc="estimate: subset regressions", unit="subset", disable=not progress) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for r in ready:
                    c = pending.pop(r)
                    rows = ray.get(r)
                    write_parquet(chunk_dir / f"chunk-{c:05d}.parquet", _rows_table(rows))
                    bar.update(len(chunks[c]))
    solve_s = time.perf_counter() - t_solve
    results = pd.concat([pd.read_parquet(f) for f in sorted(chunk_dir.glob("chunk-*.parquet"))], ignore_index=True)
    results["members"] = results["members"].map(list)
    write_parquet(out / "results.parquet", _rows_table(results.to_dict("records")))
    aff = affinity_matrix(results, names, e.metric)
    write_affinity(run_dir, aff, e.metric)
    summary = {
        "fingerprint": fp,
        "tasks": n,
        "num_subsets": len(subsets),
        "subset_size": size,
        "ray_tasks": len(chunks),
        "metric": e.metric,
        "coverage": aff.coverage,
        "mean_pair_count": float(aff.counts[~np.eye(n, dtype=bool)].mean()) if n > 1 else 0.0,
        "converged_fraction": float(results.drop_duplicates("subset_id")["converged"].mean()),
        "mean_relative_loss_change": float(((results["loss"] - results["loss0"]) / results["loss0"]).mean()),
        "solve_seconds": round(solve_s, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if aff.coverage < 1.0:
        log.warning(
            "estimate: only %.0f%% of task pairs appear together in a subset; raise estimate.num_subsets "
            "or estimate.subset_size for a complete affinity matrix", 100 * aff.coverage,
        )
    write_json(out / "summary.json", summary)
    log.info("estimate: %d subsets of %d tasks in %.1f s (%d Ray tasks); pair coverage %.0f%%",
             len(subsets), size, summary["seconds"], len(chunks), 100 * aff.coverage)
    return summary


def _rows_table(rows: list[dict]):
    import pyarrow as pa

    return pa.Table.from_pylist(rows)


def write_affinity(run_dir: Path, aff: Affinity, metric: str) -> None:
    write_text(run_dir / "affinity.csv", aff.frame("centered").to_csv(float_format="%.6g"))
    write_text(run_dir / "affinity_raw.csv", aff.frame("raw").to_csv(float_format="%.6g"))
    write_text(run_dir / "affinity_counts.csv", aff.frame("counts").to_csv())
    write_json(run_dir / "affinity.json", {
        "metric": metric,
        "orientation": "larger is better transfer",
        "definition": "affinity.csv: A_ij = T_ij - T_ii, T_ij = mean over sampled subsets S containing i and j of "
                      + ("-loss_i(S)" if metric == "loss" else "accuracy_i(S)")
                      + " (linearised estimate on validation); A_ii = 0; uncovered pairs 0",
        "coverage": aff.coverage,
        "tasks": aff.names,
    })


def read_affinity(run_dir: Path) -> tuple[list[str], np.ndarray]:
    path = run_dir / "affinity.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `elora estimate` first")
    frame = pd.read_csv(path, index_col=0)
    return [str(c) for c in frame.columns], frame.to_numpy(dtype=float)
