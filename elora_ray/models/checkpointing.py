"""Gradient (activation) checkpointing for the backbone: when it is on, and turning it on."""

from __future__ import annotations

from torch import nn

CHECKPOINTING_MIN_PARAMETERS = 1_000_000_000
"""``train.gradient_checkpointing: auto`` turns it on for decoders from this size: below it the
activations of our batches are small next to the weights (SmolLM2-135M, batch 16 × 96 tokens:
~0.4 GB in fp32), above it they grow with layers × hidden and dominate (Llama-8B, batch 16 × 512
tokens in bf16: ~20 GB without, ~1.5 GB with)."""


def use_checkpointing(setting: bool | str, kind: str, parameters: int) -> bool:
    if setting == "auto":
        return kind == "decoder" and parameters >= CHECKPOINTING_MIN_PARAMETERS
    return bool(setting)


def enable_checkpointing(backbone: nn.Module) -> bool:
    """Turn on non-reentrant checkpointing of a transformers backbone (works with frozen weights and
    inputs that need no grad, unlike the reentrant variant). Returns whether the model supports it."""
    if not getattr(backbone, "supports_gradient_checkpointing", False):
        return False
    if hasattr(backbone, "activation_checkpointing_enable"):  # transformers ≥ 5
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return True


def maybe_enable_checkpointing(model: nn.Module, setting: bool | str) -> bool:
    """Turn checkpointing on for a :class:`MultiTaskClassifier`'s backbone when ``setting`` (or its
    ``auto`` rule) says so; returns whether it is on."""
    backbone = getattr(model, "lm", None) or getattr(model, "backbone", None)
    if backbone is None:
        return False
    params = sum(p.numel() for p in backbone.parameters())
    if not use_checkpointing(setting, getattr(model, "kind", "encoder"), params):
        return False
    return enable_checkpointing(backbone)
