"""Where a model runs: one device for all of its modules, chosen explicitly, never by silent fallback.

Two rules (issue: "ready for real clusters"):

* A worker that **reserved** a GPU (a Ray actor or task with ``num_gpus``, a Ray Train worker with
  ``use_gpu``) and cannot see one is broken (a CPU-only torch build, a driver problem): it fails
  at once with :class:`DeviceError` instead of running hours on the CPU. A worker that did not
  reserve one uses the CPU even when a GPU is visible (it would otherwise share a GPU that Ray
  gave to someone else).
* After a model is built every parameter and buffer sits on one device. A 4-bit backbone is put
  on its device when it is loaded (bitsandbytes quantises it there); :func:`place_model` then
  moves the rest (task heads, adapters, verbaliser tables) next to it, and
  :func:`assert_one_device` names any module that is left behind.
"""

from __future__ import annotations

import math
import os

import torch

from ..errors import DeviceError

__all__ = ["DeviceError", "assert_one_device", "check_collective_gpu_share", "client_pool_size", "devices_of", "is_quantized",
           "packed_gpu_share", "place_model", "processes_at_once", "reserved_gpu_ids", "worker_device"]

PACKING_MARGIN = 1.25
"""Room kept above a process's estimated peak GPU memory when several share one GPU."""
MAX_PROCESSES_PER_GPU = 8


def reserved_gpu_ids() -> list:
    """The GPU ids Ray assigned to the current worker ([] outside Ray or without a reservation)."""
    try:
        import ray

        return list(ray.get_gpu_ids()) if ray.is_initialized() else []
    except Exception:  # noqa: BLE001 - not inside a Ray worker
        return []


def packed_gpu_share(peak_bytes: int, gpu_bytes: int, collective_ranks: int = 1) -> float:
    """The GPU share of one process under an ``auto`` GPU setting: ``1/k`` with
    ``k = floor(gpu_bytes / (peak_bytes · 1.25))`` processes per GPU, 1 ≤ k ≤ 8 — small models
    (featurize actors, single-worker training jobs, federated client actors) pack several per GPU.

    A whole GPU when the GPU's memory (``gpu_bytes``) or the process's estimated peak
    (``peak_bytes``, from :mod:`elora_ray.plan`) is unknown (0), and always for a rank of a
    data-parallel group of ``collective_ranks`` ≥ 2 (NCCL refuses two ranks on one GPU; see
    :func:`check_collective_gpu_share`). The one place this rule lives: the plan and every stage use it."""
    if collective_ranks >= 2 or gpu_bytes <= 0 or peak_bytes <= 0:
        return 1.0
    k = max(1, min(MAX_PROCESSES_PER_GPU, math.floor(gpu_bytes / (peak_bytes * PACKING_MARGIN))))
    return 1.0 / k


def processes_at_once(gpus: float, share: float, cpus: float, cpus_per_process: float) -> int:
    """How many processes reserving ``share`` of a GPU and ``cpus_per_process`` CPUs a cluster of
    ``gpus`` GPUs and ``cpus`` CPUs runs at once: one per share of the GPUs, no more than the CPUs hold
    when GPUs are shared (Ray would leave the others waiting); on CPUs, ``cpus // cpus_per_process``."""
    by_cpu = max(1, int(cpus // max(cpus_per_process, 1e-9)))
    if not (share > 0 and gpus > 0):
        return by_cpu
    by_gpu = max(1, int(gpus / share + 1e-9))
    return min(by_gpu, by_cpu) if share < 1 else by_gpu


def gpu_share(setting: float | str, workers: int, gpus: float) -> float:
    """GPU share of each of ``workers`` workers (federated client actors, federated Ray Train
    workers): the setting as given, or (``auto``) the cluster's ``gpus`` shared evenly, at most one
    each (0 without GPUs)."""
    if setting != "auto":
        return float(setting)
    return min(1.0, gpus / max(1, workers)) if gpus > 0 else 0.0


def client_pool_size(workers: int | None, gpus_per_worker: float | str, cpus: int, gpus: int, host_bytes: int,
                     actor_host_bytes: int) -> int:
    """Actors of the federated client pool: ``workers`` when given; on a GPU cluster one per GPU (or
    ``gpus / gpus_per_worker`` for a fraction — an explicit one, or ``auto`` resolved by
    :func:`packed_gpu_share` — as many as the CPUs and the memory allow) — every actor holds a model
    copy on its GPU, so one per CPU would put 8 copies on each GPU of an 8-CPU node; on CPUs as many
    as both the CPUs and the memory allow (each actor holds a model copy in RAM)."""
    if workers:
        return int(workers)
    by_memory = max(1, min(cpus, int(host_bytes // max(1, actor_host_bytes))))
    if gpus > 0:
        share = 1.0 if gpus_per_worker == "auto" else float(gpus_per_worker)
        if share <= 0:
            return by_memory
        return min(processes_at_once(gpus, share, cpus, 1), by_memory) if share < 1 else max(1, int(gpus // share))
    return by_memory


def check_collective_gpu_share(workers: int, gpus_per_worker: float, what: str, setting: str) -> None:
    """Refuse, before anything starts, a data-parallel group whose ranks could share one GPU.

    With two or more Ray Train workers on GPUs, each rank is an NCCL rank, and NCCL refuses two
    ranks on one device ("Duplicate GPU detected"), which shows up minutes later as a hung or crashed
    run. Ray packs fractional GPU requests onto the same GPU, so ``gpus_per_worker`` < 1 with ≥ 2
    workers is such a group. ``what`` names the group, ``setting`` the option to change.
    """
    if workers >= 2 and 0 < gpus_per_worker < 1:
        raise DeviceError(
            f"{what}: {workers} data-parallel workers with {gpus_per_worker:g} GPU each would put two NCCL ranks on "
            f"one GPU (NCCL refuses that). Give each worker a whole GPU ({setting}=1), or use one worker per adapter "
            "(train.num_workers: 0 packs several adapters on a GPU by fraction instead)")


def worker_device(reserved_gpu: bool, what: str) -> torch.device:
    """``cuda`` for a worker that reserved a GPU (it must be visible), else ``cpu``.

    Ray sets ``CUDA_VISIBLE_DEVICES`` to the reserved GPU(s), so ``cuda`` (index 0) is this
    worker's own GPU. ``what`` names the worker in the error message.
    """
    if not reserved_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        import socket

        raise DeviceError(
            f"{what} reserved a GPU on {socket.gethostname()} but torch cannot use one "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}). Install a CUDA build of "
            "torch on every GPU node (see cluster/Dockerfile), or run on CPUs (train.use_gpu=false, "
            "featurize.gpus_per_actor=0, federated.gpus_per_worker=0)")
    return torch.device("cuda")


def is_quantized(p: torch.Tensor) -> bool:
    """A bitsandbytes 4-bit parameter (placed when the model is loaded; never moved after)."""
    return type(p).__name__ == "Params4bit"


def place_model(model: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """Move every parameter and buffer of ``model`` to ``device``; 4-bit weights must already be there.

    Each module is moved by torch's own ``_apply`` (as ``Module.to`` does), except that 4-bit
    weights are never touched. Call it before building an optimizer. Returns ``model`` after
    :func:`assert_one_device`.
    """
    device = torch.device(device)
    move = lambda t: t.to(device)  # noqa: E731
    for module in model.modules():
        local = [(n, p) for n, p in module._parameters.items() if p is not None]
        stray_4bit = [n for n, p in local if is_quantized(p) and not _same(p.device, device)]
        if stray_4bit:
            raise DeviceError(f"4-bit weight '{stray_4bit[0]}' of {type(module).__name__} was loaded on "
                              f"{module._parameters[stray_4bit[0]].device}, not on {device}: build the model with device={device}")
        if not any(is_quantized(p) for _, p in local):
            module._apply(move, recurse=False)  # torch's own rules for parameters, their gradients and buffers
            continue
        for name, p in local:  # a 4-bit layer: its other parameters (bias) and buffers only
            if not is_quantized(p) and not _same(p.device, device):
                p.data = p.data.to(device)
        for name, b in list(module._buffers.items()):
            if b is not None and not _same(b.device, device):
                module._buffers[name] = b.to(device)
    assert_one_device(model, device)
    return model


def devices_of(model: torch.nn.Module) -> dict[str, list[str]]:
    """Device → names of the parameters and buffers on it."""
    out: dict[str, list[str]] = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        out.setdefault(str(t.device), []).append(name)
    return out


def assert_one_device(model: torch.nn.Module, device: str | torch.device | None = None) -> torch.device:
    """The one device all of ``model`` is on; :class:`DeviceError` naming the strays otherwise."""
    where = devices_of(model)
    if not where:
        return torch.device(device) if device is not None else torch.device("cpu")
    if device is not None:
        target = str(torch.device(device))
        target = next((d for d in where if _same(torch.device(d), torch.device(target))), target)
    else:
        target = max(where, key=lambda d: len(where[d]))
    strays = {d: names for d, names in where.items() if d != target}
    if strays:
        detail = "; ".join(f"{len(n)} on {d} (e.g. {', '.join(n[:3])})" for d, n in strays.items())
        raise DeviceError(f"{type(model).__name__} is split across devices: expected everything on {target}, found {detail}")
    return torch.device(target)


def _same(a: torch.device, b: torch.device) -> bool:
    """cuda and cuda:0 are the same place when only one GPU is visible (as in a Ray GPU worker)."""
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        return (a.index or 0) == (b.index or 0) or a.type == "cpu"
    return a.index == b.index
