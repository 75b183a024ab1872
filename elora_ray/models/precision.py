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


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags (``/proc/cpuinfo``) of instructions that compute bf16 matmuls natively."""


def cpu_flags() -> set[str]:
    """This machine's CPU flags from ``/proc/cpuinfo`` (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_cpu_bf16() -> bool:
    """Whether this machine's CPU computes bf16 natively (AVX512-BF16 or AMX: e.g. AMD Zen 4, Intel Sapphire
    Rapids). There, bf16 autocast trained MiniLM and SmolLM2 ~1.5x faster than fp32 (benchmarks/decoder_speed.py);
    elsewhere torch emulates it, slower than fp32."""
    return any(f in cpu_flags() for f in CPU_BF16_FLAGS)


def resolve_precision(setting: str, device: str | torch.device) -> str:
    """``fp32`` or ``bf16`` for ``compute.precision`` on ``device`` (``auto``: bf16 on a GPU that has it natively;
    ``native``: also on a CPU that has it natively)."""
    if setting == "bf16":
        return "bf16"
    if setting in ("auto", "native") and native_bf16(device):
        return "bf16"
    if setting == "native" and torch.device(device).type == "cpu" and native_cpu_bf16():
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
    """What precision adds to an artifact's fingerprint: nothing for fp32 / auto (the fp32 runs' keys); ``bf16``
    and ``native`` are keyed by the setting (``native`` is bf16 or fp32 by the hardware it runs on, so, as with
    ``auto``, a run is not to be resumed on other hardware)."""
    return {"precision": setting} if setting in ("bf16", "native") else {}
