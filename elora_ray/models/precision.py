"""Numeric precision of forward passes: bf16 autocast where it pays (GPUs), fp32 elsewhere.

Weights, optimizer states and the per-sample gradients we project stay fp32: autocast runs the
forward's matmuls in bf16 and keeps reductions (softmax, losses) in fp32.
"""

from __future__ import annotations

import contextlib

import torch


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` is a GPU that computes in bf16 natively (compute capability ≥ 8: A100, A10G,
    L4, H100…). ``torch.cuda.is_bf16_supported()`` also says yes on T4/V100, where bf16 is emulated
    and slower than fp32."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index)[0] >= 8


def resolve_precision(setting: str, device: str | torch.device) -> str:
    """``fp32`` or ``bf16`` for ``compute.precision`` on ``device`` (``auto``: bf16 on a GPU that has it natively)."""
    if setting == "bf16":
        return "bf16"
    if setting == "auto" and native_bf16(device):
        return "bf16"
    return "fp32"


def resolve_model_dtype(setting: str, device: str | torch.device) -> torch.dtype:
    """The dtype the backbone is loaded in: ``model.dtype`` as given, or (``auto``) bfloat16 on a GPU
    with native bf16 (half the memory of fp32; autocast computes in bf16 there anyway) and float32
    elsewhere (CPU runs keep their fp32 results)."""
    if setting == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[setting]


def model_fingerprint(model_cfg) -> dict:
    """``model`` section as it enters artifact fingerprints: ``dtype: auto`` counts as float32 (what it
    is on a CPU, and what every run before the setting existed used), like ``compute.precision``."""
    data = model_cfg.model_dump(mode="json")
    if data.get("dtype") == "auto":
        data["dtype"] = "float32"
    return data


def apply_tf32(enabled: bool) -> None:
    """TF32 tensor cores for fp32 matmuls and convolutions (no effect on CPUs)."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


def autocast(precision: str, device: str | torch.device):
    """A context running the forward in ``precision`` on ``device`` (bf16 autocast, or nothing)."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fingerprint_part(setting: str) -> dict:
    """What precision adds to an artifact's fingerprint: nothing for fp32 / auto (the fp32 runs' keys)."""
    return {"precision": setting} if setting == "bf16" else {}
