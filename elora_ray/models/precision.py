"""Numeric precision of forward passes: bf16 autocast where it pays (GPUs), fp32 elsewhere.

Weights, optimizer states and the per-sample gradients we project stay fp32: autocast runs the
forward's matmuls in bf16 and keeps reductions (softmax, losses) in fp32.
"""

from __future__ import annotations

import contextlib

import torch


def resolve_precision(setting: str, device: str | torch.device) -> str:
    """``fp32`` or ``bf16`` for ``compute.precision`` on ``device`` (``auto``: bf16 on a GPU that supports it)."""
    device = torch.device(device)
    if setting == "bf16":
        return "bf16"
    if setting == "auto" and device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


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
