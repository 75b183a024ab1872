"""Run adapter jobs with Ray Train, concurrently where the cluster has room, and export them.

Each job is one Ray task that builds a ``TorchTrainer`` and calls ``fit()``:

- ``train.num_workers == 0``: Ray Train local mode; the training function runs inside that
  task, which reserves ``train.cpus_per_worker`` CPUs (and a GPU when used), so as many jobs
  run at once as the cluster has room for.
- ``train.num_workers >= 1``: the task only launches the trainer (0 CPUs); Ray Train's DDP
  worker group reserves the resources, and jobs queue on them.

After ``fit()`` the task exports the best checkpoint as a PEFT adapter directory, computes the
adapter's logits on the requested (split, task) samples, and writes the job record last.
The Ray Train run folder is ``ray_train/<id>-<fingerprint>``: rerunning a killed job with
the same configuration resumes from its latest checkpoint (Train V2 restores by name).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from ..artifacts import read_data_manifest, read_job_record, read_prepared
from ..config import RunConfig
from ..errors import ConfigError, EloraError
from ..io import write_json, write_parquet
from ..layout import RunLayout
from ..models.classifier import TaskSpec
from ..raysession import cluster_gpus, current_node_id, ensure_ray
from .jobs import AdapterJob, job_done
from .predict import predict_logits

log = logging.getLogger(__name__)

OUTPUT_SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("task", pa.string()),
        ("sample_id", pa.string()),
        ("label_id", pa.int32()),
        ("logits", pa.list_(pa.float32())),
    ]
)


class TrainJobError(EloraError):
    """An adapter job failed; the message names the job and the cause."""


def compute_outputs(peft_model, model, tasks, output_tasks: dict[str, list[str]], batch_size: int = 64, device="cpu",
                    precision: str = "fp32") -> pa.Table:
    """Logits of ``peft_model`` on every (split, task) requested, keyed by sample id (forwards in
    ``precision``, as training ran them: bf16 autocast on a GPU by default)."""
    by_name = {t.name: t for t in tasks}
    cols: dict[str, list] = {k: [] for k in OUTPUT_SCHEMA.names}
    for split, names in output_tasks.items():
        for name in names:
            rows = [(name, e) for e in by_name[name].splits.get(split, [])]
            if not rows:
                continue
            logits, gold = predict_logits(peft_model, model, by_name, rows, batch_size, device, precision)
            cols["split"] += [split] * len(rows)
            cols["task"] += [name] * len(rows)
            cols["sample_id"] += [e.sample_id for _, e in rows]
            cols["label_id"] += gold.astype(np.int32).tolist()
            cols["logits"] += [np.asarray(r, np.float32) for r in logits]
    return pa.table(cols, schema=OUTPUT_SCHEMA)


def resolve_use_gpu(cfg: RunConfig) -> bool:
    """``auto``: GPUs if the cluster has some now. ``true`` is taken as is on a cluster (an
    autoscaling one may have no GPU node until the first job asks for one); only a local Ray
    instance without GPUs, which nothing will ever add one to, is an error."""
    if cfg.train.use_gpu == "auto":
        return cluster_gpus() > 0
    if cfg.train.use_gpu and cluster_gpus() == 0:
        from ..raysession import started_local_instance

        if started_local_instance():
            raise ConfigError("train.use_gpu=true but this machine's Ray instance has no GPUs "
                              "(set train.use_gpu: auto or false, or connect to a GPU cluster with ray.address)")
        log.warning("train.use_gpu=true but no Ray node has a GPU yet: the training jobs wait until the "
                    "autoscaler adds GPU nodes (check `ray status`; on a fixed cluster use train.use_gpu: auto)")
    return bool(cfg.train.use_gpu)


def export_job(
    cfg: RunConfig, run_dir: Path, job: AdapterJob, state_dir: Path | None, metrics: dict, fingerprint: str, wall_s: float,
    device: str = "cpu", built=None,
) -> dict:
    """Write the adapter, its outputs and the job record (last) from a training state (or from
    an already ``built`` (peft_model, model) pair)."""
    from ..adapters import count_parameters, save_adapter
    from .loop import load_trainable_state
    from .model import build_job_model, job_config, load_training_state

    tasks = read_prepared(run_dir)
    specs = [TaskSpec.of(t) for t in tasks]
    peft_model, model = built if built is not None else build_job_model(cfg, job, run_dir, specs, device)
    if state_dir is not None:
        params, _, _ = load_training_state(state_dir)
        load_trainable_state(peft_model, params)
    adapter_params = count_parameters(peft_model)
    save_adapter(peft_model, job_config(cfg, job).adapter, RunLayout(run_dir).adapter(job.id), extra={"job": job.to_dict()})
    t0 = time.perf_counter()
    from ..models.precision import apply_tf32, resolve_precision

    apply_tf32(cfg.compute.tf32)
    precision = resolve_precision(cfg.compute.precision, device)
    table = compute_outputs(peft_model, model, tasks, job.output_tasks, cfg.evaluate.batch_size, device, precision)
    write_parquet(RunLayout(run_dir).output(job.id), table)
    record = {
        "id": job.id, "method": job.method, "kind": job.kind, "tasks": job.tasks, "fingerprint": fingerprint,
        "job": job.to_dict(), "adapter_parameters": adapter_params,
        "metrics": {k: v for k, v in metrics.items()}, "wall_s": round(wall_s, 3),
        "output_seconds": round(time.perf_counter() - t0, 3), "output_rows": table.num_rows,
        "node_id": current_node_id(),
        "export": {"device": str(device), "precision": precision, "resources": _assigned_resources()},
    }
    write_json(RunLayout(run_dir).job_record(job.id), record)
    return record


def _assigned_resources() -> dict[str, float]:
    """The Ray resources this process holds (empty outside a Ray task)."""
    import ray

    if not ray.is_initialized():
        return {}
    try:
        return {k: float(v) for k, v in ray.get_runtime_context().get_assigned_resources().items()}
    except Exception:  # noqa: BLE001 - the driver, or a Ray without the API: nothing to report
        return {}


def run_job(cfg_data: dict, run_dir: str, job_data: dict, fingerprint: str, use_gpu: bool) -> dict:
    """Train one job with Ray Train (or only evaluate a reference job) and export it. Ray reuses worker
    processes: what the job leaves is released before and after it, so each job's peak is its own."""
    from ..models.memory import release_process_memory

    release_process_memory()
    try:
        return _run_job(cfg_data, run_dir, job_data, fingerprint, use_gpu)
    finally:
        release_process_memory()


def _run_job(cfg_data: dict, run_dir: str, job_data: dict, fingerprint: str, use_gpu: bool) -> dict:
    import torch

    cfg = RunConfig.model_validate(cfg_data)
    job = AdapterJob.from_dict(job_data)
    run = Path(run_dir)
    t0 = time.perf_counter()
    threads = max(1, int(cfg.train.cpus_per_worker))
    torch.set_num_threads(threads)
    from ..models.placement import worker_device

    # A local-mode job, a θ* reference and a linearised learner reserve one worker's resources (a GPU
    # share with use_gpu) and compute here; with Ray Train workers a trained job's task is a 0-resource
    # launcher (its export gets its own task below).
    device = str(worker_device(use_gpu and (cfg.train.num_workers == 0 or job.kind != "trained"), f"training job {job.id}"))
    if job.kind == "reference":
        return export_job(cfg, run, job, None, {}, fingerprint, time.perf_counter() - t0, device)
    if job.kind == "linearized":
        import pandas as pd

        from .linearized import linearized_learner
        from .model import build_job_model
        from .worker import PeakMemory

        tasks = read_prepared(run)
        with PeakMemory() as mem:
            built = build_job_model(cfg, job, run, [TaskSpec.of(t) for t in tasks], device)
            metrics = linearized_learner(cfg, run, job.tasks, pd.read_parquet(run / str(job.targets)), built[0])
        d = cfg.featurize.dim
        metrics.update(mem.megabytes())
        metrics["train_flops"] = 2.0 * metrics["samples"] * d * d + d**3 / 3.0  # normal equations + solve
        return export_job(cfg, run, job, None, metrics, fingerprint, time.perf_counter() - t0, device, built=built)

    import ray.train
    from ray.train.torch import TorchTrainer

    from .worker import train_loop_per_worker

    t = cfg.train
    if t.num_workers == 0:  # Ray Train's "Running in local mode" notice, once per adapter, is noise here
        for name in ("ray.train.v2._internal.execution.train_fn_utils", "ray.train.v2.api.config"):
            logging.getLogger(name).setLevel(logging.WARNING)
    scaling = ray.train.ScalingConfig(
        num_workers=t.num_workers,
        use_gpu=use_gpu and t.num_workers > 0,
        resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": train_gpu_share(cfg)} if use_gpu and t.num_workers > 0 else {})},
    )
    run_config = ray.train.RunConfig(
        name=f"{job.id}-{fingerprint}",
        storage_path=str(RunLayout(run).ray_train.resolve()),
        failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
    )
    loop_config = {"cfg": cfg_data, "job": job_data, "run_dir": str(run.resolve()), "threads": threads, "use_gpu": use_gpu}
    if t.num_workers == 0:  # local mode persists nothing itself: our checkpoints live in the run folder
        loop_config["local_checkpoints"] = str((RunLayout(run).ray_train / run_config.name / "local_checkpoints").resolve())
    trainer = TorchTrainer(train_loop_per_worker, train_loop_config=loop_config, scaling_config=scaling, run_config=run_config)
    result = trainer.fit()
    from ..models.memory import release_process_memory

    release_process_memory()  # the trained model (local mode: this process) before the export loads it again
    if result.error is not None:
        raise TrainJobError(f"training job {job.id!r} failed: {result.error}")
    if result.checkpoint is None:
        raise TrainJobError(f"training job {job.id!r} finished without a checkpoint")
    metrics = dict(result.metrics or {})
    if t.num_workers > 0:
        # This launcher holds no resources (it may share a CPU head with everything else): the export,
        # a forward pass over every requested split, runs in a task reserving what one training worker
        # had (its GPU when training used GPUs), like the workers, next to the checkpoint's storage.
        export = ray.remote(export_checkpoint).options(**job_resources(cfg, use_gpu, workers=False), max_retries=0)
        return ray.get(export.remote(cfg_data, run_dir, job_data, result.checkpoint.path, metrics, fingerprint,
                                     time.perf_counter() - t0, use_gpu))
    with result.checkpoint.as_directory() as d:
        return export_checkpoint(cfg_data, run_dir, job_data, str(d), metrics, fingerprint, time.perf_counter() - t0,
                                 use_gpu)


def estimated_job_cost(cfg: RunConfig, job: AdapterJob, manifest: dict) -> float:
    """A job's work in sample passes, to start the longest first: training samples × epochs (at most
    that: early stopping may end it sooner) plus one forward over the samples it computes logits for.
    A θ* reference and a linearised learner only run forwards."""
    sizes = {name: meta.get("sizes", {}) for name, meta in manifest.get("tasks", {}).items()}
    forwards = sum(sizes.get(task, {}).get(split, 0) for split, names in job.output_tasks.items() for task in names)
    if job.kind != "trained":
        return forwards / 3.0  # a forward is about a third of a training step's forward + backward
    train = sum(min(sizes.get(task, {}).get("train", 0), (job.train_samples or {}).get(task, float("inf")))
                for task in job.tasks)
    return train * (job.epochs if job.epochs is not None else cfg.train.epochs) + forwards / 3.0


def job_resources(cfg: RunConfig, use_gpu: bool, workers: bool = True) -> dict:
    """Ray resources of one adapter job's Ray task. ``workers``: the task that trains (local mode:
    ``train.cpus_per_worker`` CPUs and a GPU when used; with Ray Train workers a 0-CPU launcher, the
    worker group reserving the rest). ``workers=False``: the resources of one training worker (what
    an export after distributed training, a θ* reference and a linearised learner reserve: they
    compute in their own task). GPUs: :func:`train_gpu_share` of one."""
    local = cfg.train.num_workers == 0
    if workers and not local:
        return {"num_cpus": 0}
    return {"num_cpus": cfg.train.cpus_per_worker, **({"num_gpus": train_gpu_share(cfg)} if use_gpu else {})}


def train_gpu_share(cfg: RunConfig) -> float:
    """``train.gpus_per_worker`` as a number: ``auto`` is the plan's share
    (:func:`elora_ray.plan.planned_gpu_share`: a fraction for a small single-process job on GPUs of
    known memory, a whole GPU otherwise and for every rank of ≥ 2 data-parallel workers)."""
    if cfg.train.gpus_per_worker != "auto":
        return float(cfg.train.gpus_per_worker)
    from ..plan import planned_gpu_share

    return planned_gpu_share(cfg, "train")


def with_train_gpu_share(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``train.gpus_per_worker`` resolved (:func:`train_gpu_share`), so the tasks it is
    shipped to reserve what the driver planned (a task on another node would see other GPUs, or none)."""
    if cfg.train.gpus_per_worker != "auto":
        return cfg
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"gpus_per_worker": train_gpu_share(cfg)})})


def export_checkpoint(cfg_data: dict, run_dir: str, job_data: dict, checkpoint: str, metrics: dict, fingerprint: str,
                      seconds_before: float, use_gpu: bool) -> dict:
    """Export a job from its Ray Train checkpoint folder (on the device this process reserved)."""
    import json

    from ..models.placement import worker_device

    t0 = time.perf_counter()
    cfg = RunConfig.model_validate(cfg_data)
    job = AdapterJob.from_dict(job_data)
    torch_threads(cfg)
    device = str(worker_device(use_gpu, f"export of training job {job.id}"))
    d = Path(checkpoint)
    metrics = dict(metrics)
    if (d / "evals.json").is_file():
        metrics["evals"] = json.loads((d / "evals.json").read_text())
    return export_job(cfg, Path(run_dir), job, d, metrics, fingerprint, seconds_before + time.perf_counter() - t0, device)


def torch_threads(cfg: RunConfig) -> None:
    import torch

    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))


def run_jobs(
    cfg: RunConfig,
    run_dir: Path,
    jobs: Sequence[AdapterJob],
    desc: str = "train",
    progress: bool = True,
    on_done: Callable[[dict], None] | None = None,
    force: bool = False,
) -> dict[str, dict]:
    """Run every job not already done (by fingerprint; all of them with ``force``, discarding
    their Ray Train checkpoints); returns {job id: job record}."""
    import ray

    ids = [j.id for j in jobs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate job ids in {ids}")
    manifest = read_data_manifest(run_dir)
    data_fp = manifest["fingerprint"]
    records: dict[str, dict] = {}
    todo: list[tuple[AdapterJob, str]] = []
    for job in jobs:
        fp = job.fingerprint(cfg, data_fp)
        if force:
            shutil.rmtree(RunLayout(run_dir).ray_train / f"{job.id}-{fp}", ignore_errors=True)
        if not force and job_done(run_dir, job, fp):
            records[job.id] = read_job_record(run_dir, job.id)  # type: ignore[assignment]
        else:
            todo.append((job, fp))
    if records:
        log.info("%s: %d of %d adapters already trained for this configuration, skipping them", desc, len(records), len(jobs))
    if not todo:
        return {j.id: records[j.id] for j in jobs}
    # Longest first: Ray starts queued tasks in submission order, so the longest job does not start
    # last and leave the other workers idle while it runs alone.
    todo.sort(key=lambda jf: -estimated_job_cost(cfg, jf[0], manifest))
    ensure_ray(cfg.ray)
    use_gpu = resolve_use_gpu(cfg)
    if use_gpu:
        from ..models.placement import check_collective_gpu_share

        cfg = with_train_gpu_share(cfg)
        check_collective_gpu_share(cfg.train.num_workers, train_gpu_share(cfg), "train", "train.gpus_per_worker")
        log.info("%s: each training job holds %g GPU", desc, train_gpu_share(cfg))
    remote = ray.remote(run_job)
    cfg_data = cfg.model_dump(mode="json")
    pending = {remote.options(**job_resources(cfg, use_gpu, workers=job.kind == "trained"), max_retries=0)
               .remote(cfg_data, str(run_dir), job.to_dict(), fp, use_gpu): job for job, fp in todo}
    bar = tqdm(total=len(jobs), initial=len(records), desc=desc, unit="adapter", disable=not progress)
    failures: list[str] = []
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                rec = ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - reported with the job id below
                cause = getattr(exc, "cause", None) or exc
                failures.append(f"{job.id}: {type(cause).__name__}: {cause}")
                log.error("%s: adapter %s failed: %s", desc, job.id, cause)
                continue
            records[job.id] = rec
            m = rec["metrics"]
            if job.kind == "reference":
                log.info("%s: %s (θ*) outputs computed in %.1fs", desc, job.id, rec["output_seconds"])
            elif job.kind == "linearized":
                log.info(
                    "%s: %s fit by ridge regression on %d tasks' projected gradients in %.1fs (uncentred R² %.3f)",
                    desc, job.id, len(job.tasks), rec["wall_s"], m.get("fit_r2_uncentered", float("nan")),
                )
            else:
                resumed = m.get("resumed_from_step", -1.0)
                log.info(
                    "%s: %s trained on %d tasks in %.1fs (%d steps%s, best step %s, val %s)",
                    desc, job.id, len(job.tasks), rec["wall_s"], int(m.get("steps", 0)),
                    f" after resuming at step {int(resumed)}" if resumed is not None and resumed >= 0 else "",
                    _int_or_none(m.get("best_step")), _fmt_val(m),
                )
            if on_done is not None:
                on_done(rec)
            bar.update(1)
    finally:
        bar.close()
    if failures:
        raise TrainJobError(f"{desc}: {len(failures)} adapter job(s) failed:\n  " + "\n  ".join(failures))
    return {j.id: records[j.id] for j in jobs}


def _int_or_none(value) -> int | None:
    return None if value is None else int(value)


def _fmt_val(m: dict) -> str:
    evals = m.get("evals") or []
    if not evals:
        return "n/a"
    best = [e for e in evals if e.get("step") == m.get("best_step")] or evals[-1:]
    e = best[0]
    return f"loss {e.get('loss', float('nan')):.4f} acc {e.get('accuracy', float('nan')):.3f}"
