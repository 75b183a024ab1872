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


PLAIN_ATTENTION_MAX_SCORES = 16 * 128 * 128
"""Largest batch × length² (attention scores per head and layer) for which a bf16 forward on a CPU computes
attention with transformers' plain ("eager") implementation instead of PyTorch's fused kernel, whose bf16
backward is slow on CPUs (``benchmarks/attention_kernels.py``: a LoRA training step of MiniLM at 16 tokens
~0.6× the time, SmolLM2 at 64 tokens ~0.8×; forwards alone cost the same, so only forwards whose backward
follows switch). The plain implementation keeps every head's scores for the backward, which this bound keeps
small: 16 × 128² scores × 6 bytes × heads × layers, ~110 MB for MiniLM, ~420 MB for SmolLM2; larger batches
keep the fused kernel."""


def autocast(precision: str, device: str | torch.device, attention_scores: int | None = None,
             model: torch.nn.Module | None = None):
    """A context running the forward in ``precision`` on ``device`` (bf16 autocast, or nothing).

    ``attention_scores`` (batch × length², from the callers whose backward follows) and ``model``: a bf16 forward
    on a CPU of at most :data:`PLAIN_ATTENTION_MAX_SCORES` also switches ``model``'s transformers attention to
    the plain implementation for its duration (not under gradient checkpointing, whose recomputation runs later)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    kind = torch.device(device).type
    cast = torch.autocast(kind, dtype=torch.bfloat16)
    if kind != "cpu" or model is None or attention_scores is None or attention_scores > PLAIN_ATTENTION_MAX_SCORES:
        return cast
    stack = contextlib.ExitStack()
    stack.enter_context(cast)
    stack.enter_context(plain_attention(model))
    return stack


@contextlib.contextmanager
def plain_attention(model: torch.nn.Module):
    """Within it, the transformers models inside ``model`` that compute attention with ``sdpa`` use ``eager``
    (they read ``config._attn_implementation`` at every forward). Nothing changes under gradient checkpointing:
    its recomputation in the backward, after the context, must compute what the forward did."""
    configs, seen = [], set()
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) is True:  # transformers' flag on checkpointed stacks
            configs = []
            break
        cfg = getattr(module, "config", None)
        if cfg is not None and id(cfg) not in seen and getattr(cfg, "_attn_implementation", None) == "sdpa":
            seen.add(id(cfg))
            configs.append(cfg)
    for cfg in configs:
        cfg._attn_implementation = "eager"
    try:
        yield
    finally:
        for cfg in configs:
            cfg._attn_implementation = "sdpa"


def attention_scores(encoding: dict) -> int | None:
    """batch × length² of a tokenised batch (``input_ids`` [B, L]), for :func:`autocast`."""
    ids = encoding.get("input_ids")
    if ids is None or getattr(ids, "ndim", 0) != 2:
        return None
    return int(ids.shape[0]) * int(ids.shape[1]) ** 2


def fingerprint_part(setting: str) -> dict:
    """What precision adds to an artifact's fingerprint: nothing for fp32 / auto (the fp32 runs' keys); ``bf16``
    and ``native`` are keyed by the setting (``native`` is bf16 or fp32 by the hardware it runs on, so, as with
    ``auto``, a run is not to be resumed on other hardware)."""
    return {"precision": setting} if setting in ("bf16", "native") else {}
