"""θ*: the base model with its adapter at initialisation (and probed heads for encoders)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file

from ..adapters import attach_adapter, needs_quantized_base
from ..config import RunConfig
from ..models.build import build_classifier
from ..models.classifier import MultiTaskClassifier, TaskSpec
from ..models.placement import place_model


def build_model_at_init(
    cfg: RunConfig,
    specs: Sequence[TaskSpec],
    heads_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    train_heads: bool = False,
):
    """(peft_model, classifier) at θ*: seeded adapter init; heads from ``heads_path`` if given."""
    model = build_classifier(
        cfg.model, specs, quantize=needs_quantized_base(cfg.adapter), quant_type=cfg.adapter.quant_type, seed=cfg.seed,
        device=device,
    )
    if heads_path is not None:
        load_heads(model, heads_path)
    peft_model = attach_adapter(model, cfg.adapter, seed=cfg.seed, train_heads=train_heads)
    place_model(peft_model, device)  # heads and adapters next to the backbone (a 4-bit one is loaded there)
    peft_model.eval()
    return peft_model, model


def load_heads(model: MultiTaskClassifier, path: str | Path) -> None:
    heads = getattr(model, "heads", None)
    if heads is None:
        raise ValueError(f"{path}: probed heads given but the model ({model.kind}) has no task heads")
    state = load_file(str(path))
    missing, unexpected = heads.load_state_dict(state, strict=True), None
    del missing, unexpected
