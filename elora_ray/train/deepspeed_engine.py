"""``train.strategy: deepspeed``: wrap a worker's adapter model in a DeepSpeed ZeRO engine.

Runs inside a Ray Train worker, whose torch process group (NCCL on GPUs, gloo on CPUs) DeepSpeed
reuses. The optimizer is torch's AdamW handed to the engine (DeepSpeed's fused CPU Adam would
compile a C++ extension first), so a DeepSpeed run follows the same update rule as a DDP run; the
engine adds ZeRO sharding of the optimizer state (stage 1) and gradients (stage 2), and bf16.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..config import TrainConfig
from ..errors import EloraError


class DeepSpeedUnavailable(EloraError):
    pass


def deepspeed_config(train: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed JSON config of one worker (micro batch = ``train.batch_size`` per worker)."""
    ds = train.deepspeed
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": ds.zero_stage},
        "bf16": {"enabled": ds.bf16},
        # DeepSpeed clips the gradient norm at 1.0 unless told otherwise; the DDP path does not
        # clip, so neither does this one (set it through ``extra`` if wanted).
        "gradient_clipping": 0.0,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    config.update(ds.extra)  # validated: it cannot override the keys above that elora owns
    return config


def build_engine(peft_model: torch.nn.Module, train: TrainConfig, lr: float, weight_decay: float, device: torch.device):
    """(engine) wrapping ``peft_model``; only its trainable parameters are optimised."""
    try:
        import deepspeed
        import deepspeed.ops
    except ImportError:
        raise DeepSpeedUnavailable("train.strategy=deepspeed needs DeepSpeed: pip install 'elora_ray[deepspeed]'") from None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise DeepSpeedUnavailable("train.strategy=deepspeed: no torch process group (needs Ray Train workers)")
    if device.type == "cpu":
        # The shared-memory all-reduce op is only a speed-up for CPU collectives and would be
        # JIT-compiled (about a minute) on first use; gloo does the same job.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # DeepSpeed reads LOCAL_RANK even when the process group already exists (Ray sets it; a
    # single-process fallback keeps local debugging working).
    os.environ.setdefault("LOCAL_RANK", "0")
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    # Engine set-up draws random numbers; restoring the generators keeps dropout masks (and so the
    # whole run) identical to a DDP run with the same seed.
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    engine, _, _, _ = deepspeed.initialize(
        model=peft_model, model_parameters=params, optimizer=optimizer, config=deepspeed_config(train),
    )
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    return engine
