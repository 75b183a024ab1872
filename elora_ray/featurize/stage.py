"""Stage 1 — featurize: stream samples through a Ray Data actor pool, write parquet shards.

Layout under the run directory::

    features/state.json                       fingerprint of what decides the features
    features/heads.safetensors, probe.json    encoders: linear-probed task heads (θ*)
    features/<split>/<task>/part-00000.parquet  task, split, sample_id, label, label_id,
                                              tokens, flops, h0, grad (d floats), node (Ray node id)
    features/manifest.json                    written last: its presence = stage complete

A shard is written atomically once all of its samples have come back, so a killed run
resumes by skipping the shards that exist. Changing anything that affects the features
(model, adapter, data, projection, seed) invalidates them.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..models.precision import model_fingerprint
from ..artifacts import read_prepared
from ..config import RunConfig
from ..errors import DataError
from ..io import fingerprint, write_json, write_parquet
from ..models.precision import fingerprint_part
from ..models.placement import processes_at_once
from ..layout import FEATURE_DIR, RunLayout
from ..raysession import cluster_cpus, cluster_gpus, ensure_ray
from ..tasks.schema import TaskData
from .probe import fit_probe, heads_state

log = logging.getLogger(__name__)


def features_fingerprint(cfg: RunConfig, data_fingerprint: str) -> str:
    f = cfg.featurize
    part = {
        "data": data_fingerprint,
        "model": model_fingerprint(cfg.model),
        "adapter": cfg.adapter.model_dump(mode="json"),
        "featurize": {k: getattr(f, k) for k in ("dim", "projection", "block_rows", "probe", "probe_samples_per_task", "probe_l2")},
        **({"gradient": cfg.feature_gradient()} if cfg.feature_gradient() != "adapter" else {}),
        "seed": cfg.seed,
        "version": 1,
        **fingerprint_part(cfg.compute.precision),
    }
    return fingerprint(part)


def theta_star_fingerprint(cfg: RunConfig, data_fingerprint: str) -> str:
    """What decides θ* (base model, seeded adapter init, probed heads) — not the projection, so
    real fine-tuning from θ* can be shared between runs that differ only in ``featurize.dim``."""
    f = cfg.featurize
    part = {
        "data": data_fingerprint,
        "model": model_fingerprint(cfg.model),
        "adapter": cfg.adapter.model_dump(mode="json"),
        "probe": {k: getattr(f, k) for k in ("probe", "probe_samples_per_task", "probe_l2")},
        "seed": cfg.seed,
        "version": 1,
    }
    return fingerprint(part)


def _specs(tasks: list[TaskData]) -> list[dict]:
    return [{"name": t.name, "labels": list(t.labels), "verbalizer": t.verbalizer} for t in tasks]


def _rows_table(task: TaskData, split: str, rows, shard: str) -> pa.Table:
    rows = sorted(rows, key=lambda e: len(e.text) + len(e.text_pair or ""))  # less padding per batch
    return pa.table(
        {
            "task": [task.name] * len(rows),
            "split": [split] * len(rows),
            "sample_id": [e.sample_id for e in rows],
            "text": [e.text for e in rows],
            "text_pair": pa.array([e.text_pair for e in rows], type=pa.string()),
            "label": [e.label for e in rows],
            "label_id": pa.array([task.label_id(e.label) for e in rows], type=pa.int64()),
            "shard": [shard] * len(rows),
        }
    )


def map_samples(tables: list[pa.Table], cfg: RunConfig, specs: list[dict], heads_path: str | None, mode: str) -> Iterator[dict]:
    """Run ``SampleFeaturizer`` over ``tables`` on a Ray Data actor pool; yield output batches."""
    import ray
    from ray.data import ActorPoolStrategy

    from .worker import SampleFeaturizer

    f = cfg.featurize
    gpus = cluster_gpus() if f.gpus_per_actor == "auto" or f.actors == "auto" else 0
    _, per_actor = actor_resources(cfg, gpus)
    if f.actors == "auto":  # as many as the GPU shares (and, when shared, the CPUs) hold, as the plan counts them
        actors = processes_at_once(gpus, per_actor, cluster_cpus(), f.cpus_per_actor)
    else:
        actors = int(f.actors)
    actors = max(1, min(actors, len(tables)))
    ds = ray.data.from_arrow(tables)
    ds = ds.map_batches(
        SampleFeaturizer,
        fn_constructor_kwargs={
            "cfg_data": cfg.model_dump(mode="json"),
            "specs": specs,
            "heads_path": heads_path,
            "mode": mode,
            "threads": max(1, int(f.cpus_per_actor)),
        },
        batch_size=f.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=actors),
        num_cpus=f.cpus_per_actor,
        num_gpus=per_actor,
    )  # Ray Data restarts dead actors and retries their batches by default
    log.info("featurize[%s]: %d actor(s), %s per actor", mode, actors,
             f"{per_actor:g} GPU" if per_actor else f"{f.cpus_per_actor:g} CPU")
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def actor_resources(cfg: RunConfig, cluster_gpu_count: int | None = None) -> tuple[float, float]:
    """(CPUs, GPU share) each featurize actor reserves (the model check's task reserves the same).
    ``gpus_per_actor: auto`` with GPUs: the plan's share (:func:`elora_ray.plan.planned_gpu_share`:
    several actors per GPU when the model is small and the GPU's memory known, else 1)."""
    f = cfg.featurize
    if f.gpus_per_actor != "auto":
        return f.cpus_per_actor, float(f.gpus_per_actor)
    gpus = cluster_gpus() if cluster_gpu_count is None else cluster_gpu_count
    if not gpus:
        return f.cpus_per_actor, 0.0
    from ..plan import planned_gpu_share

    return f.cpus_per_actor, planned_gpu_share(cfg, "featurize")


LOCAL_PROBE_MAX_SAMPLES = 20_000
"""Up to this many probe samples are embedded in the driver process (no actor start-up cost,
a forward pass only); more go through the Ray Data actor pool."""


def _local_batches(tables: list[pa.Table], cfg: RunConfig, specs: list[dict]) -> Iterator[dict]:
    import torch

    from .worker import SampleFeaturizer

    fn = SampleFeaturizer(cfg.model_dump(mode="json"), specs, None, "pooled", threads=torch.get_num_threads())
    table = pa.concat_tables(tables)
    for start in range(0, table.num_rows, cfg.featurize.batch_size):
        chunk = table.slice(start, cfg.featurize.batch_size)
        yield fn({c: chunk[c].to_numpy(zero_copy_only=False) for c in chunk.column_names})


def run_probe(cfg: RunConfig, tasks: list[TaskData], out_dir: Path, progress: bool = True) -> dict:
    """Fit each task's head on frozen pooled features of (up to N) training samples."""
    rng = np.random.default_rng(cfg.seed)
    tables = []
    for t in tasks:
        rows = list(t.splits["train"])
        if len(rows) > cfg.featurize.probe_samples_per_task:
            idx = np.sort(rng.choice(len(rows), cfg.featurize.probe_samples_per_task, replace=False))
            rows = [rows[i] for i in idx]
        tables.append(_rows_table(t, "train", rows, f"probe/{t.name}"))
    total = sum(len(x) for x in tables)
    feats: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks}
    labels: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks}
    t0 = time.perf_counter()
    local = total <= LOCAL_PROBE_MAX_SAMPLES
    log.info("probe: pooled features of %d samples %s", total, "in this process" if local else "on the Ray Data actor pool")
    batches = _local_batches(tables, cfg, _specs(tasks)) if local else map_samples(tables, cfg, _specs(tasks), None, "pooled")
    with tqdm(total=total, desc="probe: pooled features", unit="sample", disable=not progress) as bar:
        for batch in batches:
            for name in np.unique(batch["task"]):
                rows = batch["task"] == name
                feats[str(name)].append(batch["pooled"][rows])
                labels[str(name)].append(batch["label_id"][rows])
            bar.update(len(batch["task"]))
    weights, info = [], {}
    for t in tasks:
        w, b, meta = fit_probe(
            np.concatenate(feats[t.name]), np.concatenate(labels[t.name]), len(t.labels), cfg.featurize.probe_l2, cfg.seed
        )
        weights.append((w, b))
        info[t.name] = {**meta, "samples": int(sum(len(x) for x in labels[t.name]))}
        log.info("probe %-20s train accuracy %.3f on %d samples (C=%g)", t.name, meta["train_accuracy"], info[t.name]["samples"], meta.get("C", float("nan")))
    from safetensors.torch import save_file

    from ..io import atomic_path

    with atomic_path(out_dir / "heads.safetensors") as tmp:
        save_file(heads_state(weights), str(tmp))
    probe = {"tasks": info, "seconds": round(time.perf_counter() - t0, 2)}
    write_json(out_dir / "probe.json", probe)
    return probe


def featurize(cfg: RunConfig, run_dir: Path, force: bool = False, progress: bool = True) -> dict:
    """Compute (or resume) projected per-sample gradients for ``cfg.featurize.splits``."""
    manifest_data = json.loads(RunLayout(run_dir).data_manifest.read_text()) if RunLayout(run_dir).data_manifest.is_file() else None
    if manifest_data is None:
        raise FileNotFoundError(f"{run_dir}/data/manifest.json not found: run `elora prepare` first")
    fp = features_fingerprint(cfg, manifest_data["fingerprint"])
    out_dir = run_dir / FEATURE_DIR
    state_path = out_dir / "state.json"
    if out_dir.exists() and (force or not state_path.is_file() or json.loads(state_path.read_text()).get("fingerprint") != fp):
        if state_path.is_file() or force:
            log.info("featurize: %s; recomputing features", "forced" if force else "inputs changed")
        shutil.rmtree(out_dir)
    manifest_path = RunLayout(run_dir).features_manifest
    if manifest_path.is_file():
        log.info("featurize: features complete in %s (fingerprint %s), skipping", out_dir, fp)
        return json.loads(manifest_path.read_text())
    # keep what an earlier pass recorded (gradient_parameters): a resume whose shards are all written computes none
    prev = json.loads(state_path.read_text()) if state_path.is_file() else {}
    write_json(state_path, {**(prev if prev.get("fingerprint") == fp else {}), "fingerprint": fp})
    ensure_ray(cfg.ray)
    t0 = time.perf_counter()
    tasks = read_prepared(run_dir)

    heads_path = None
    probe_info = None
    from ..models.registry import detect_kind, load_hf_config, resolve_model_dir

    kind = detect_kind(load_hf_config(resolve_model_dir(cfg.model), cfg.model.trust_remote_code), cfg.model.kind)
    if kind == "encoder" and cfg.featurize.probe:
        if not (out_dir / "heads.safetensors").is_file():
            probe_info = run_probe(cfg, tasks, out_dir, progress)
        else:
            probe_info = json.loads((out_dir / "probe.json").read_text())
            log.info("featurize: reusing probed heads from %s", out_dir / "heads.safetensors")
        heads_path = str(out_dir / "heads.safetensors")

    # Plan the shards; skip the ones already written.
    shard_rows: dict[str, int] = {}
    # A run killed while writing a shard leaves its staged copy in a hidden folder beside it (io.atomic_path).
    for stale in out_dir.glob("*/*/.part-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    todo: list[pa.Table] = []
    for split in cfg.featurize.splits:
        for t in tasks:
            rows = t.splits.get(split, [])
            for k in range(0, len(rows), cfg.featurize.shard_size):
                key = f"{split}/{t.name}/part-{k // cfg.featurize.shard_size:05d}"
                chunk = rows[k : k + cfg.featurize.shard_size]
                shard_rows[key] = len(chunk)
                if not (out_dir / f"{key}.parquet").is_file():
                    todo.append(_rows_table(t, split, chunk, key))
    done_before = len(shard_rows) - len(todo)
    if done_before:
        log.info("featurize: resuming, %d of %d shards already written", done_before, len(shard_rows))
    remaining = sum(len(x) for x in todo)
    state = json.loads(state_path.read_text())
    grad_params = state.get("gradient_parameters")
    buffers: dict[str, list[dict]] = {}
    counts: dict[str, int] = {}
    micro: int | None = None
    peak_rss = 0
    t_grad = time.perf_counter()
    if todo:
        with tqdm(total=remaining, desc="featurize: projected gradients", unit="sample", disable=not progress) as bar:
            for batch in map_samples(todo, cfg, _specs(tasks), heads_path, "gradients"):
                for key in np.unique(batch["shard"]):
                    sel = batch["shard"] == key
                    key = str(key)
                    buffers.setdefault(key, []).append({k: v[sel] for k, v in batch.items()})
                    counts[key] = counts.get(key, 0) + int(sel.sum())
                    if counts[key] == shard_rows[key]:
                        parts = buffers.pop(key)
                        _check_finite(parts, out_dir / f"{key}.parquet")
                        write_parquet(out_dir / f"{key}.parquet", _shard_table(parts))
                grad_params = int(batch["grad_params"][0])
                if "micro_batch" in batch and len(batch["micro_batch"]):
                    micro = min(micro or 1 << 30, int(batch["micro_batch"].min()))
                    peak_rss = max(peak_rss, int(batch["peak_rss"].max()))
                bar.update(len(batch["shard"]))
    grad_s = time.perf_counter() - t_grad
    if grad_params is not None and state.get("gradient_parameters") != grad_params:
        write_json(state_path, {**state, "gradient_parameters": grad_params})
    missing = [k for k in shard_rows if not (out_dir / f"{k}.parquet").is_file()]
    if missing:
        raise RuntimeError(f"featurize: {len(missing)} shard(s) incomplete, e.g. {missing[0]}; rerun to resume")
    summary = summarize_features(out_dir, cfg.featurize.splits)
    manifest = {
        "fingerprint": fp,
        "dim": cfg.featurize.dim,
        "projection": cfg.featurize.projection if cfg.feature_gradient() == "adapter" else "kronecker-gaussian",
        "gradient": cfg.feature_gradient(),
        "kind": kind,
        "probe": probe_info,
        "splits": summary["splits"],
        "gradient_parameters": grad_params,
        "samples": summary["samples"],
        "tokens": summary["tokens"],
        "flops": summary["flops"],
        "samples_per_node": summary["nodes"],
        "shards": len(shard_rows),
        "shards_resumed": done_before,
        "micro_batch_size_this_run": micro,
        "peak_rss_bytes_per_actor_this_run": peak_rss or None,
        "seconds": round(time.perf_counter() - t0, 2),
        "gradient_seconds_this_run": round(grad_s, 2),
        "samples_per_s_this_run": round(remaining / grad_s, 2) if remaining and grad_s > 0 else None,
    }
    write_json(manifest_path, manifest)
    log.info(
        "featurize: %d samples, d=%d, %.1f s (%s samples/s)", summary["samples"], cfg.featurize.dim,
        manifest["seconds"], manifest["samples_per_s_this_run"],
    )
    return manifest


def _check_finite(parts: list[dict], path: Path) -> None:
    """Refuse to write a shard with NaN/inf gradients or log-odds (it would poison every regression)."""
    grad = np.concatenate([p["grad"] for p in parts])
    h0 = np.concatenate([p["h0"] for p in parts])
    bad = ~(np.isfinite(grad).all(axis=1) & np.isfinite(h0))
    if bad.any():
        ids = np.concatenate([p["sample_id"] for p in parts]).astype(str)[bad]
        raise DataError(
            f"{int(bad.sum())} sample(s) gave NaN/inf gradients at θ*, e.g. {ids[:3].tolist()}; the shard was not "
            "written. Check the model (dtype overflow, a 4-bit base on an unsupported device) and these samples",
            path=path, field="grad/h0",
        )


def _shard_table(parts: list[dict]) -> pa.Table:
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    grad = np.ascontiguousarray(cols.pop("grad"), dtype=np.float32)
    d = grad.shape[1]
    order = np.argsort(cols["sample_id"].astype(str), kind="stable")
    cols.pop("grad_params", None)
    cols.pop("micro_batch", None)
    cols.pop("peak_rss", None)
    table = {
        "task": pa.array(cols["task"].astype(str)[order]),
        "split": pa.array(cols["split"].astype(str)[order]),
        "sample_id": pa.array(cols["sample_id"].astype(str)[order]),
        "label": pa.array(cols["label"].astype(str)[order]),
        "label_id": pa.array(cols["label_id"].astype(np.int64)[order]),
        "tokens": pa.array(cols["tokens"].astype(np.int32)[order]),
        "flops": pa.array(cols["flops"].astype(np.float64)[order]),
        "h0": pa.array(cols["h0"].astype(np.float32)[order]),
        "grad": pa.FixedSizeListArray.from_arrays(pa.array(grad[order].ravel()), d),
    }
    if "node" in cols:  # the Ray node that computed each sample (observability; multi-node runs)
        table["node"] = pa.array(cols["node"].astype(str)[order]).dictionary_encode()
    return pa.table(table)


def summarize_features(out_dir: Path, splits: list[str]) -> dict:
    per: dict[str, dict[str, int]] = {}
    samples = tokens = 0
    flops = 0.0
    nodes: dict[str, int] = {}
    for split in splits:
        per[split] = {}
        for task_dir in sorted((out_dir / split).glob("*")) if (out_dir / split).is_dir() else []:
            n = 0
            for f in sorted(task_dir.glob("part-*.parquet")):
                has_node = "node" in pq.read_schema(f).names
                t = pq.read_table(f, columns=["tokens", "flops"] + (["node"] if has_node else []))
                if has_node:
                    for node, c in zip(*np.unique(t["node"].to_numpy(zero_copy_only=False).astype(str), return_counts=True)):
                        nodes[str(node)] = nodes.get(str(node), 0) + int(c)
                n += t.num_rows
                tokens += int(pc.sum(t["tokens"]).as_py() or 0)
                flops += float(pc.sum(t["flops"]).as_py() or 0.0)
            per[split][task_dir.name] = n
            samples += n
    return {"splits": per, "samples": samples, "tokens": tokens, "flops": flops, "nodes": nodes}
