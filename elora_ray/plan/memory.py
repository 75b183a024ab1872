"""Peak memory of each stage's processes, from the model's shape and the run config.

The model is deliberately simple and says where each byte comes from:

- **weights**: every parameter in its load dtype (``model.dtype``); with a 4-bit adapter type the
  quantizable linear weights take 0.5 byte plus one fp32 absmax per 64 weights (bitsandbytes nf4/fp4,
  block 64), everything else (embeddings, norms, LM head, task heads) stays in the load dtype.
- **adapter state** (training): fp32 weight + gradient + two AdamW moments = 16 bytes per parameter.
- **activations** (every sequence at ``model.max_length``: the worst batch, not the average one):
  per token per layer ``a·(C_HIDDEN·H + C_INTER·I) + a·heads·T`` bytes kept for the
  backward (``a`` = 2 under bf16 autocast, 4 in fp32; the last term is the attention probabilities
  of the math/eager attention), ×layers; with gradient checkpointing only each layer's input
  (``a·H``) is kept, plus one layer's activations during its recomputation. Inference keeps one
  layer at a time. The constants were measured on SmolLM2-135M and tiny Llama/BERT models on the CPU
  (``benchmarks/memory_plan.py`` prints estimate and measured peak side by side).
- **featurize capture**: ``full_rank`` keeps each adapted site's input and output gradient per
  token in fp32 (``4·T·Σ(in+out)`` per sample); ``adapter`` keeps per-sample gradients (``4·p``)
  and the cached projection (``min(4·p·d, cache limit)``).
- **mapped file** (CPU, 4-bit): the file's float pages, read to quantise and kept mapped (the
  float embeddings and norms are views of the file), resident for the process's life.
- **process baseline**: Python, torch, transformers, Ray and this package imported (0.7 GiB
  measured on the CPU); a GPU process adds the CUDA libraries on the host (1.5 GiB assumed) and
  its context and workspaces on the GPU (0.75 GiB assumed) — to be confirmed by ``gpu_check.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..config import RunConfig
from .shape import ModelShape

GiB = 1024**3
C_HIDDEN = 9.0
C_INTER = 4.0
HOST_BASELINE = int(0.7 * GiB)
GPU_HOST_BASELINE = int(1.5 * GiB)
GPU_CONTEXT = int(0.75 * GiB)
QUANT_BYTES = 0.5 + 4 / 64
"""bytes per 4-bit weight: two weights a byte plus a fp32 absmax per block of 64."""
ADAM_BYTES = 16
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
VALIDATION_BATCH = 64
"""Samples per forward of the validation checks during training (``elora_ray.train.worker``)."""


@dataclass(frozen=True)
class Resources:
    """What one process of a stage reserves from Ray."""

    cpus: float
    gpus: float
    """GPU share (0: a CPU process)."""


@dataclass
class StagePlan:
    stage: str
    where: str
    """Who runs it: ``driver`` (the head), ``Ray task``, ``Ray Data actor``, ``Ray Train worker``."""
    processes: int
    """How many run at once (actors, workers; per adapter for training)."""
    resources: Resources
    device: str
    """``cuda`` or ``cpu``."""
    dtype: str
    """Weights as loaded (``nf4``/``fp4`` for the quantized linear layers)."""
    compute: str
    """``bf16`` autocast or ``fp32``."""
    batch_size: int
    weights_bytes: int
    device_peak_bytes: int
    """Peak on the process's device (the GPU; on a CPU process the same as ``host_peak_bytes``)."""
    host_peak_bytes: int
    breakdown: dict[str, int]
    """What the device peak is made of."""
    gradient_checkpointing: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resources"] = asdict(self.resources)
        return d


def weights_bytes(shape: ModelShape, dtype: str, quantized: bool) -> int:
    b = DTYPE_BYTES[dtype]
    if not quantized:
        return shape.parameters * b
    return int(shape.quantizable_parameters * QUANT_BYTES + (shape.parameters - shape.quantizable_parameters) * b)


def activation_bytes(shape: ModelShape, batch: int, seq: int, compute_bytes: int, *, backward: bool,
                     checkpointing: bool = False, positions: int = 1) -> int:
    """Activations one forward (and backward) of ``batch`` sequences of ``seq`` tokens keeps at its peak;
    ``positions``: the scored positions per sequence (1 for a classifier; the federated next-token
    learner scores every position of a window)."""
    tokens = batch * seq
    per_layer = compute_bytes * tokens * (C_HIDDEN * shape.hidden + C_INTER * shape.intermediate + shape.heads * seq)
    out_width = shape.vocab if shape.kind == "decoder" else 16
    head = 4 * batch * positions * out_width * 3  # logits of the scored positions (decoder: over the vocabulary), softmax, grad
    embed = 4 * tokens * shape.hidden * 2
    if not backward:
        return int(per_layer + head + embed)
    if checkpointing:
        return int(compute_bytes * tokens * shape.hidden * shape.layers + per_layer + head + embed)
    return int(per_layer * shape.layers + head + embed)


def process_baselines(device: str) -> tuple[int, int]:
    """(host, device) bytes a process holds before the model: imports, CUDA libraries, context."""
    if device == "cuda":
        return GPU_HOST_BASELINE, GPU_CONTEXT
    return HOST_BASELINE, 0


def load_transient_bytes(shape: ModelShape, dtype: str, quantized: bool, device: str) -> int:
    """Host bytes touched while loading beyond the weights themselves. Weights are read from the
    memory-mapped safetensors file straight into their place: on the CPU the pages become the
    weights (no second copy when the file's dtype is the load dtype), but a 4-bit model is quantised
    from the file's float weights, whose pages stay mapped; a GPU process reads one shard at a time
    through the page cache (HF shards ≤ 5 GB)."""
    if device == "cuda":
        return min(weights_bytes(shape, dtype, False), 5 * GiB)
    return weights_bytes(shape, dtype, False) if quantized else 0


def compute_bytes(precision: str) -> int:
    return 2 if precision == "bf16" else 4


def stage_memory(shape: ModelShape, *, dtype: str, quantized: bool, device: str, precision: str, batch: int, seq: int,
                 kind: str, cfg: RunConfig, checkpointing: bool = False, positions: int = 1,
                 validation_batch: int = VALIDATION_BATCH) -> tuple[int, int, int, dict[str, int]]:
    """(weights, device peak, host peak, breakdown) of one process of a stage ``kind``:
    ``check``, ``featurize``, ``train`` or ``inference`` (``positions``: see :func:`activation_bytes`;
    ``validation_batch``: the forward-only batches a ``train`` process runs between steps)."""
    a = compute_bytes(precision)
    w = weights_bytes(shape, dtype, quantized)
    parts: dict[str, int] = {"weights": w}
    if kind in ("train", "check"):
        parts["adapter_state"] = shape.adapter_parameters * ADAM_BYTES
        parts["activations"] = activation_bytes(shape, batch, seq, a, backward=True, checkpointing=checkpointing,
                                                positions=positions)
        if kind == "train":  # the validation checks in between run batches of VALIDATION_BATCH without grad
            parts["activations"] = max(parts["activations"],
                                       activation_bytes(shape, validation_batch, seq, a, backward=False, positions=positions))
    elif kind == "featurize":
        parts["activations"] = activation_bytes(shape, batch, seq, a, backward=True, checkpointing=checkpointing,
                                                positions=positions)
        if cfg.feature_gradient() == "full_rank":
            parts["capture"] = 4 * batch * seq * shape.adapted_width + 4 * batch * cfg.featurize.dim
        else:
            p = shape.adapter_parameters
            cache = cfg.featurize.cache_limit_mb
            limit = (256 if device == "cpu" else 1 << 40) if cache == "auto" else cache
            proj = 4 * p * cfg.featurize.dim
            parts["capture"] = 4 * batch * p * 2
            parts["projection"] = proj if proj <= limit * 2**20 else 4 * cfg.featurize.block_rows * cfg.featurize.dim
    else:
        parts["activations"] = activation_bytes(shape, batch, seq, a, backward=False, positions=positions)
    host_base, dev_base = process_baselines(device)
    device_peak = sum(parts.values()) + dev_base
    if device == "cuda":
        parts["context"] = dev_base
        host = host_base + load_transient_bytes(shape, dtype, quantized, device)
    else:
        # A 4-bit model quantised on the CPU reads the whole float file through its mapping while it
        # loads; the mapping is released once loaded (models.build.release_file_mapping), so the file's
        # pages are a peak of the load, not of the work after it.
        transient = load_transient_bytes(shape, dtype, quantized, device)
        host = host_base + max(sum(parts.values()), w + transient)
        if transient:
            parts["mapped_file_while_loading"] = transient
    return w, int(device_peak if device == "cuda" else host), int(host), parts
