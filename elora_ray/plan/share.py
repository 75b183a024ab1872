"""The GPU share an ``auto`` setting resolves to when a stage starts: the plan's, on this machine.

``featurize.gpus_per_actor``, ``train.gpus_per_worker`` and ``federated.gpus_per_worker`` set to
``auto`` give each process :func:`~elora_ray.models.placement.packed_gpu_share` of its estimated
peak GPU memory (:func:`~.fit.stage_plans`, :func:`federated_client_plan`) — several small-model
processes per GPU — when the GPU's memory is known (this machine has the GPUs,
``NodeShape.this_machine()``), and a whole GPU otherwise and for any rank of a ≥ 2-worker NCCL group.
``elora plan`` shows the same shares, computed by the same functions.
"""

from __future__ import annotations

import logging

from ..config import RunConfig
from ..models.placement import packed_gpu_share
from .fit import NodeShape, _stage, stage_plans
from .memory import Resources, StagePlan
from .shape import ModelShape, model_shape

log = logging.getLogger(__name__)

FEDERATED_FEATURIZE_BATCH = 16
"""Windows per forward/backward of the federated featurisation (``WindowFeaturizer``)."""


def federated_client_plan(cfg: RunConfig, shape: ModelShape, node: NodeShape) -> StagePlan:
    """One federated client process (a client actor, or a worker of ``federated.engine: ray_train``):
    the larger of its local training (``federated.batch_size`` windows of ``context_tokens``, scoring
    twice that many between steps) and its featurisation (adapter gradients), with the logits of every
    position of a window when ``federated.targets: all``."""
    f = cfg.federated
    res = Resources(1.0, 1.0 if node.gpus else 0.0)
    positions = f.context_tokens if f.targets == "all" else 1
    feat_cfg = cfg.model_copy(update={"featurize": cfg.featurize.model_copy(update={"gradient": "adapter"})})
    common = {"seq": f.context_tokens, "positions": positions}
    train = _stage("federated", "client actor", 1, res, shape, cfg, node, "train", f.batch_size,
                   validation_batch=2 * f.batch_size, **common)
    feat = _stage("federated", "client actor", 1, res, shape, feat_cfg, node, "featurize", FEDERATED_FEATURIZE_BATCH,
                  **common)
    return max((train, feat), key=lambda s: s.device_peak_bytes)


def collective_ranks(cfg: RunConfig, stage: str) -> int:
    """Ranks of one data-parallel group of ``stage`` (1: a process of its own)."""
    if stage == "train":
        return cfg.train.num_workers
    if stage == "federated_train":
        return cfg.federated.train_workers
    return 1


def planned_gpu_share(cfg: RunConfig, stage: str, node: NodeShape | None = None) -> float:
    """GPU share of one process of ``stage`` (``featurize``: its actors and the model check; ``train``:
    a training job's process or Ray Train worker; ``federated``: a client actor; ``federated_train``: a
    worker of ``federated.engine: ray_train``, or its group's task in local mode) for an ``auto``
    setting, on ``node`` (default: this machine). 1.0 when the GPU memory is unknown or the process is
    one of ≥ 2 NCCL ranks."""
    ranks = collective_ranks(cfg, stage)
    if ranks >= 2:
        return packed_gpu_share(0, 0, collective_ranks=ranks)
    node = node or NodeShape.this_machine()
    if not (node.gpus and node.gpu_bytes):
        return 1.0
    try:
        shape = model_shape(cfg.model, cfg.adapter)
    except Exception as exc:  # noqa: BLE001 - no estimate: a whole GPU, as without the memory
        log.warning("GPU share: no memory estimate for %s (%s); each process takes a whole GPU", cfg.model.name_or_path, exc)
        return 1.0
    if stage in ("federated", "federated_train"):
        return packed_gpu_share(federated_client_plan(cfg, shape, node).device_peak_bytes, node.gpu_bytes)
    share = next(s for s in stage_plans(cfg, shape, node) if s.stage == stage).resources.gpus
    return share or 1.0
