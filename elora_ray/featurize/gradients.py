"""Exact per-sample gradients of a per-sample scalar w.r.t. adapter linear layers, batched.

One forward and one backward per batch (Opacus-style hooks): for a linear layer
``y = x Wᵀ + b`` applied to token activations ``x[b, t, :]``, the gradient of sample ``b``'s
output is ``Σ_t ∂h_b/∂y[b,t,:] ⊗ x[b,t,:]`` — because samples do not interact in the
forward pass, backpropagating ``Σ_b h_b`` gives each sample's ``∂h_b/∂y[b]`` exactly.

Which layers: PEFT initialises LoRA's ``B`` (and our bottleneck adapter's ``up``) to zero, so
at θ* the gradient w.r.t. ``A`` / ``down`` is exactly zero. When every output-side matrix is
zero we hook only those (half the parameters, no wasted projection dimensions); otherwise
(a trained or non-zero-initialised adapter) every adapter linear layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..adapter_types import input_side_modules, zero_side_modules
from .hooks import ForwardBackwardHooks

OUTPUT_SIDE = zero_side_modules()
"""Adapter modules that are zero at init, by adapter type (:mod:`elora_ray.adapter_types`)."""
INPUT_SIDE = input_side_modules()


@dataclass(frozen=True)
class GradLayer:
    name: str
    module: nn.Linear

    @property
    def size(self) -> int:
        m = self.module
        return m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)


def _role(name: str) -> str | None:
    parts = name.split(".")
    for role in OUTPUT_SIDE + INPUT_SIDE:
        if role in parts:
            return role
    return None


def gradient_layers(model: nn.Module, which: str = "auto") -> list[GradLayer]:
    """The adapter linear layers whose per-sample gradients we take, in a fixed order.

    ``which``: ``auto`` (output side only when it is all zero, else all), ``all``, ``output``.
    Raises if the model has trainable adapter parameters that no hooked layer covers.
    """
    found: list[GradLayer] = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and _role(name) is not None and m.weight.requires_grad:
            found.append(GradLayer(name, m))
    if not found:
        raise ValueError("the model has no trainable LoRA / bottleneck adapter layers to differentiate")
    outputs = [g for g in found if _role(g.name) in OUTPUT_SIDE]
    if which == "output" or (
        which == "auto" and outputs and all(not g.module.weight.detach().any() for g in outputs)
        and all(g.module.bias is None or not g.module.bias.detach().any() for g in outputs)
    ):
        chosen = outputs
    else:
        chosen = found
    covered = {id(p) for g in found for p in g.module.parameters()}
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in covered and ".heads." not in f".{name}":
            raise ValueError(f"trainable parameter {name} is not in a supported adapter layer (LoRA A/B, bottleneck)")
    return chosen


class PerSampleGradients(ForwardBackwardHooks):
    """Context manager capturing per-sample gradients of hooked layers during one backward.

    >>> with PerSampleGradients(layers) as psg:
    ...     h = model_output_per_sample(batch)        # shape [B]
    ...     grads = psg.backward(h)                   # shape [B, p]
    """

    def __init__(self, layers: list[GradLayer]) -> None:
        super().__init__()
        self.layers = layers
        self.p = sum(g.size for g in layers)

    def _register(self) -> list:
        return [g.module.register_forward_hook(self._make_hook(i)) for i, g in enumerate(self.layers)]

    def _make_hook(self, i: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not torch.is_grad_enabled() or not output.requires_grad:
                return
            self._keep_input(i, args[0])
            self._keep_output_grad(i, output)

        return hook

    def backward(self, per_sample_output: torch.Tensor) -> torch.Tensor:
        """Backpropagate Σ_b h_b and return the [B, p] matrix of per-sample gradients."""
        batch = self._backward(per_sample_output)
        cols: list[torch.Tensor] = []
        for i, g in enumerate(self.layers):
            m = g.module
            w = torch.zeros(batch, m.out_features, m.in_features, dtype=torch.float32, device=m.weight.device)
            bias = torch.zeros(batch, m.out_features, dtype=torch.float32, device=m.weight.device) if m.bias is not None else None
            for x, gy in self._pairs(i):
                x3 = x.reshape(batch, -1, x.shape[-1]).float()
                g3 = gy.reshape(batch, -1, gy.shape[-1]).float()
                w += torch.einsum("bto,bti->boi", g3, x3)
                if bias is not None:
                    bias += g3.sum(1)
            cols.append(w.reshape(batch, -1))
            if bias is not None:
                cols.append(bias)
        self._clear()
        return torch.cat(cols, dim=1)


def gold_log_odds(logits: torch.Tensor, label_ids: torch.Tensor) -> torch.Tensor:
    """h = log(p / (1 − p)) of the gold class; ``logits`` may hold −inf for invalid classes.

    ``log(1 − p)`` is computed as the logsumexp of the other classes' log-probabilities, so it
    stays finite and exact even when p is close to 1.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    gold = logp.gather(1, label_ids.view(-1, 1)).squeeze(1)
    others = logp.scatter(1, label_ids.view(-1, 1), float("-inf"))
    return gold - torch.logsumexp(others, dim=-1)
