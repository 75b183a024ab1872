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
    backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return True
