"""Hutchinson estimate of the Hessian trace of a loss w.r.t. chosen parameters (sharpness).

Tr(∇²L) = E[vᵀ ∇²L v] for v with independent ±1 entries (Rademacher). Each probe costs one
Hessian-vector product by double back-propagation through the gradient graph built once, so
memory is that of one backward pass with ``create_graph=True`` and time ~2 backward passes
per probe. The estimate is exact for diagonal Hessians (vᵢ² = 1) and unbiased in general.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass
class TraceEstimate:
    trace: float
    """Mean of vᵀHv over the probes."""
    stderr: float
    """Standard error of that mean (0 with one probe)."""
    probes: list[float]


def hutchinson_trace(
    loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], probes: int = 32, seed: int = 0
) -> TraceEstimate:
    """Estimate Tr(∇²L) of ``loss_fn()`` w.r.t. ``params`` with ``probes`` Rademacher vectors (seeded)."""
    if probes < 1:
        raise ValueError("probes must be ≥ 1")
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no parameter requires grad")
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    values: list[float] = []
    for i in range(probes):
        vs = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(device=p.device, dtype=p.dtype) for p in params]
        hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=i < probes - 1, allow_unused=True)
        values.append(float(sum((h * v).sum() for h, v in zip(hv, vs) if h is not None)))
    mean = sum(values) / len(values)
    var = sum((x - mean) ** 2 for x in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return TraceEstimate(trace=mean, stderr=math.sqrt(var / len(values)), probes=values)
