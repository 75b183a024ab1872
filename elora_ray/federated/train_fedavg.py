"""FedAvg on Ray Train: one ``TorchTrainer`` per adapter being federated (``federated.engine: ray_train``).

Each round the group's clients are sampled exactly as the actor pool samples them
(:func:`~.fedavg.sample_clients`); worker ``r`` of ``W`` trains its share ``sampled[r::W]``
locally, one client after another, from the round's adapter, and the new adapter is the
window-weighted mean of all clients' states: every worker sums ``n_c · state_c`` and ``n_c`` over
its clients and one all-reduce (gloo/NCCL) adds the sums across workers. Any number of workers
therefore gives the same adapter as one (up to float summation order; ``tests/test_federated.py``).

Rank 0 writes the adapter and the round counter after every round (``<checkpoint>.safetensors`` /
``.json``, the layout of :mod:`.fedavg`), so a failed worker group restarted by Ray Train's
``FailureConfig``, or a killed run started again, continues at the next round. Groups train
concurrently as Ray tasks that each launch their trainer, like ``train/runner.py``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from ..config import RunConfig
from .fedavg import FedAvgRun, _save, load_run, round_seed, sample_clients

log = logging.getLogger(__name__)


def _client_data(windows_path: str, clients: list[str], cfg: RunConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each client's training windows and targets (as the client workers build them)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from .model import window_targets

    table = pq.read_table(windows_path, filters=[("split", "=", "train")])
    table = table.filter(pc.is_in(table["client"], value_set=pa.array(clients)))
    out = {}
    every = cfg.federated.targets == "all"
    for client, df in table.to_pandas().groupby("client", sort=False):
        x = np.stack(df["input_ids"].to_numpy()).astype(np.int64)
        out[client] = (x, window_targets(x, df["target"].to_numpy(np.int64), every))
    return out


def fedavg_loop_per_worker(config: dict) -> None:
    """The Ray Train worker: every round, train this worker's share of the sampled clients and
    all-reduce the window-weighted sums of their adapter states."""
    import ray.train
    import torch
    import torch.distributed as dist
    from safetensors.numpy import load_file

    from ..train.worker import PeakMemory
    from .model import build_lm, get_state, set_state, train_windows

    torch.set_num_threads(max(1, int(config["threads"])))
    cfg = RunConfig.model_validate(config["cfg"])
    f = cfg.federated
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    checkpoint = Path(config["checkpoint"])
    clients: list[str] = config["clients"]
    from ..models.placement import worker_device

    # the GPU this worker (or, in local mode, the Ray task running it) reserved; fails loudly if unseen
    device = worker_device(bool(config.get("use_gpu")), f"federated Ray Train worker {rank} of group {config['group']}")
    if device.type == "cuda":
        import ray.train.torch as rtt

        device = rtt.get_device()  # this worker's own GPU (workers on one node may all see every GPU)
    from ..models.precision import apply_tf32, resolve_precision

    precision = resolve_precision(cfg.compute.precision, device)  # the local steps run as the client actors' do
    apply_tf32(cfg.compute.tf32)
    with PeakMemory() as mem:
        peft_model, _ = build_lm(cfg, device)
        data = _client_data(config["windows"], clients, cfg)
        run = load_run(checkpoint)
        if run is None:
            init = dict(load_file(config["init"]))
            run = FedAvgRun(states={config["group"]: init})
        state = run.states[config["group"]]
        keys = sorted(state)
        while run.rounds < f.rounds:
            rnd = run.rounds
            sampled = sample_clients(clients, f.client_fraction, cfg.seed, rnd, config["group_index"])
            sums = {k: np.zeros(state[k].shape, np.float64) for k in keys}
            n_total, loss_sum, trained, updates = 0.0, 0.0, 0.0, 0.0
            for c in sampled[rank::world]:
                x, y = data[c]
                set_state(peft_model, state)
                stats = train_windows(peft_model, x, y, epochs=f.local_epochs, lr=f.lr, batch_size=f.batch_size,
                                      seed=round_seed(cfg.seed, rnd), precision=precision)
                if not math.isfinite(stats["loss"]):
                    raise FloatingPointError(f"client {c}: training loss is {stats['loss']}")
                new = get_state(peft_model)
                for k in keys:
                    sums[k] += len(y) * new[k].astype(np.float64)
                n_total += len(y)
                loss_sum += stats["loss"]
                trained += stats["windows"]
                updates += 1
            flat = torch.from_numpy(np.concatenate([sums[k].ravel() for k in keys] + [np.array([n_total, loss_sum, trained, updates])]))
            if distributed:  # NCCL (GPU workers) reduces device tensors only
                flat = flat.to(device)
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                flat = flat.cpu()
            tail = flat[-4:].tolist()
            n_total, loss_sum, trained, updates = tail
            at = 0
            if n_total > 0:
                for k in keys:
                    size = state[k].size
                    state[k] = (flat[at : at + size].numpy() / n_total).reshape(state[k].shape).astype(np.float32)
                    at += size
            run.states[config["group"]] = state
            run.rounds += 1
            run.trained_windows += int(trained)
            run.client_updates += int(updates)
            run.peak_rss_mb = max(run.peak_rss_mb, mem.megabytes()["peak_rss_mb"])
            run.history.append({"round": run.rounds, "clients": int(updates),
                                "train_loss": loss_sum / updates if updates else float("nan")})
            if rank == 0:
                _save(checkpoint, run)
            ray.train.report({"round": run.rounds, "train_loss": run.history[-1]["train_loss"]})
            if distributed:
                dist.barrier()  # nobody starts the next round before rank 0 has saved this one


def train_group(cfg_data: dict, group: str, group_index: int, clients: list[str], init_path: str, windows: str,
                checkpoint: str, storage: str, gpus: float = 0.0) -> dict:
    """One group's FedAvg with a ``TorchTrainer`` (runs inside a Ray task); returns the run's record.
    ``gpus``: the GPU share of each worker (local mode: of the Ray task running this, which reserved it)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = RunConfig.model_validate(cfg_data)
    f = cfg.federated
    if f.train_workers == 0:
        for name in ("ray.train.v2._internal.execution.train_fn_utils", "ray.train.v2.api.config"):
            logging.getLogger(name).setLevel(logging.WARNING)
    trainer = TorchTrainer(
        fedavg_loop_per_worker,
        train_loop_config={"cfg": cfg_data, "group": group, "group_index": group_index, "clients": clients,
                           "init": init_path, "windows": windows, "checkpoint": checkpoint, "threads": 1,
                           "use_gpu": gpus > 0},
        scaling_config=ray.train.ScalingConfig(
            num_workers=f.train_workers, use_gpu=gpus > 0 and f.train_workers > 0,
            resources_per_worker={"CPU": 1.0, **({"GPU": gpus} if gpus > 0 and f.train_workers > 0 else {})}),
        run_config=ray.train.RunConfig(name=Path(checkpoint).name, storage_path=storage,
                                       failure_config=ray.train.FailureConfig(max_failures=f.max_retries)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"federated group {group}: {result.error}")
    run = load_run(Path(checkpoint))
    if run is None or run.rounds < f.rounds:
        raise RuntimeError(f"federated group {group}: the trainer ended before round {f.rounds}")
    return json.loads(Path(checkpoint).with_suffix(".json").read_text())


def run_fedavg_ray_train(cfg: RunConfig, groups: dict[str, list[str]], init: dict[str, np.ndarray], fed: Path,
                         checkpoint: Path, desc: str = "fedavg") -> FedAvgRun:
    """FedAvg of every group on Ray Train (groups concurrently); the same :class:`FedAvgRun` as the pool's."""
    import ray
    from safetensors.numpy import save_file
    from tqdm.auto import tqdm

    from ..io import atomic_path

    checkpoint.mkdir(parents=True, exist_ok=True)
    init_path = checkpoint / "init.safetensors"
    if not init_path.is_file():
        with atomic_path(init_path) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in init.items()}, str(tmp))
    from ..models.placement import gpu_share
    from ..raysession import cluster_gpus

    local = cfg.federated.train_workers == 0
    # each Ray Train worker (local mode: each group's task) gets a GPU share, as the client actors do: auto is the
    # plan's share when it packs (a single-process group, GPU memory known), a whole GPU for ≥ 2 NCCL ranks, else
    # the GPUs shared evenly
    setting, workers = cfg.federated.gpus_per_worker, len(groups) * max(1, cfg.federated.train_workers)
    if setting == "auto" and cluster_gpus():
        from ..plan import planned_gpu_share

        packed = planned_gpu_share(cfg, "federated_train")
        setting = packed if packed < 1 or cfg.federated.train_workers >= 2 else setting
    gpus = gpu_share(setting, workers, cluster_gpus())
    if not local:
        from ..models.placement import check_collective_gpu_share

        check_collective_gpu_share(cfg.federated.train_workers, gpus, "federated (engine: ray_train)",
                                   "federated.gpus_per_worker")
    remote = ray.remote(train_group).options(num_cpus=1 if local else 0, num_gpus=gpus if local else 0, max_retries=0)
    cfg_data = cfg.model_dump(mode="json")
    t0 = time.perf_counter()
    refs = {remote.remote(cfg_data, g, gi, members, str(init_path), str(fed / "windows.parquet"),
                          str(checkpoint / g), str((fed / "ray_train").resolve()), gpus): g
            for gi, (g, members) in enumerate(groups.items())}
    bar = tqdm(total=len(refs), desc=f"{desc} (Ray Train)", unit="adapter", leave=False)
    try:
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done[0])
            bar.update(1)
    finally:
        bar.close()
    runs = {g: load_run(checkpoint / g) for g in groups}
    out = FedAvgRun(states={g: r.states[g] for g, r in runs.items()}, rounds=cfg.federated.rounds)
    for r in runs.values():
        out.trained_windows += r.trained_windows
        out.client_updates += r.client_updates
        out.failed_updates += r.failed_updates
        out.peak_rss_mb = max(out.peak_rss_mb, r.peak_rss_mb)
    for rnd in range(cfg.federated.rounds):
        rows = [r.history[rnd] for r in runs.values()]
        updates = sum(x["clients"] for x in rows)
        out.history.append({"round": rnd + 1, "clients": updates, "failed": 0,
                            "train_loss": float(np.nansum([x["train_loss"] * x["clients"] for x in rows]) / max(1, updates))})
    log.info("%s: %d group(s) federated on Ray Train in %.1f s", desc, len(groups), time.perf_counter() - t0)
    return out
