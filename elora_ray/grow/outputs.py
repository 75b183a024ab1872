"""Kept adapters on the added tasks: their logits on the new (split, task) pairs, appended to
``outputs/<job>.parquet``, so the combination weights can use every group for a new task.

One Ray task per adapter, with a training worker's resources (its GPU when training uses one),
like the θ* reference job; each writes its output file atomically and records what it added in
the job record (``grown_outputs``), so a resumed grow skips the adapters already extended.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..artifacts import read_job_record, read_prepared
from ..config import RunConfig
from ..io import write_json, write_parquet
from ..layout import RunLayout
from ..raysession import ensure_ray

log = logging.getLogger(__name__)


def extend_job_outputs(cfg_data: dict, run_dir: str, job_id: str, add: dict[str, list[str]], drop: list[str],
                       use_gpu: bool) -> dict:
    """Compute job ``job_id``'s logits on ``add`` ({split: tasks}) and append them to its outputs
    (rows of the ``drop`` tasks removed). Runs in a Ray task; returns {job, rows, seconds}."""
    import time

    from ..models.classifier import TaskSpec
    from ..models.placement import worker_device
    from ..models.precision import apply_tf32, resolve_precision
    from ..train.jobs import AdapterJob
    from ..train.model import build_job_model, load_adapter_weights
    from ..train.runner import compute_outputs, torch_threads

    t0 = time.perf_counter()
    cfg = RunConfig.model_validate(cfg_data)
    run = Path(run_dir)
    layout = RunLayout(run)
    torch_threads(cfg)
    record = read_job_record(run, job_id)
    if record is None:
        raise FileNotFoundError(f"job record of adapter {job_id!r} not found in {run}")
    job = AdapterJob.from_dict(record["job"])
    rows = 0
    table = pq.read_table(layout.output(job_id))
    if drop:
        table = table.filter(pc.invert(pc.is_in(table["task"], pa.array(drop))))
    if any(add.values()):
        device = str(worker_device(use_gpu, f"outputs of adapter {job_id} on the added tasks"))
        tasks = read_prepared(run)
        job.init_from = None
        peft_model, model = build_job_model(cfg, job, run, [TaskSpec.of(t) for t in tasks], device)
        if layout.adapter(job_id).is_dir():
            load_adapter_weights(peft_model, layout.adapter(job_id))
        peft_model.eval()
        apply_tf32(cfg.compute.tf32)
        new = compute_outputs(peft_model, model, tasks, add, cfg.evaluate.batch_size, device,
                              resolve_precision(cfg.compute.precision, device))
        rows = new.num_rows
        table = pa.concat_tables([table, new.cast(table.schema)])
    write_parquet(layout.output(job_id), table)
    grown = {"added": add, "removed": drop}
    write_json(layout.job_record(job_id), {**record, "grown_outputs": [*record.get("grown_outputs", []), grown]})
    return {"job": job_id, "rows": rows, "seconds": round(time.perf_counter() - t0, 2)}


def extend_outputs(cfg: RunConfig, run: Path, jobs: dict[str, dict[str, list[str]]], drop: list[str],
                   progress: bool = True) -> list[dict]:
    """Extend every listed job ({job id: {split: tasks}}) in parallel Ray tasks; skips jobs whose
    outputs already hold the added tasks (a resumed grow)."""
    import ray

    from ..train.runner import job_resources, resolve_use_gpu

    todo = {j: add for j, add in jobs.items() if not _has(run, j, add, drop)}
    if not todo:
        return []
    ensure_ray(cfg.ray)
    use_gpu = resolve_use_gpu(cfg)
    remote = ray.remote(extend_job_outputs).options(**job_resources(cfg, use_gpu, workers=False), max_retries=0)
    cfg_data = cfg.model_dump(mode="json")
    pending = [remote.remote(cfg_data, str(run), j, add, drop, use_gpu) for j, add in todo.items()]
    done = []
    with tqdm(total=len(pending), desc="grow: kept adapters on the new tasks", unit="adapter", disable=not progress) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done.append(ray.get(ready[0]))
            bar.update(1)
    return done


def _has(run: Path, job_id: str, add: dict[str, list[str]], drop: list[str]) -> bool:
    table = pq.read_table(RunLayout(run).output(job_id), columns=["split", "task"])
    have = set(zip(table["split"].to_pylist(), table["task"].to_pylist()))
    want = {(s, t) for s, names in add.items() for t in names}
    return want <= have and not any(t in drop for _, t in have)
