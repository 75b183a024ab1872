"""One interface over every adapter type: attach, regularise, save and load.

The types (lora, qlora, mplora, adapter, qadapter) are registered in
:mod:`elora_ray.adapter_types`; each names a family implemented in this package
(:mod:`.lora`, :mod:`.mplora`, :mod:`.bottleneck.family`), so nothing here branches on a type.

Saved adapters use PEFT's layout (``adapter_config.json`` + ``adapter_model.safetensors``)
plus ``elora_adapter.json`` recording our adapter config and the tasks, so a directory can
be reloaded onto a freshly built base model. Weights are only ever read from safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from peft import PeftModel, get_peft_model
from torch import nn

from ..adapter_types import adapter_type
from ..config import AdapterConfig
from ..errors import ModelError
from ..io import atomic_path
from ..models.classifier import MultiTaskClassifier
from .families import get_family

SIDE_CAR = "elora_adapter.json"


def needs_quantized_base(cfg: AdapterConfig) -> bool:
    return adapter_type(cfg.type).quantized


def _hf_model_type(model: MultiTaskClassifier) -> str:
    inner = getattr(model, "backbone", None) or getattr(model, "lm", None)
    return getattr(getattr(inner, "config", None), "model_type", "")


def _targets(model: MultiTaskClassifier, cfg: AdapterConfig) -> list[str] | str:
    if cfg.target_modules:
        return list(cfg.target_modules)
    mt = _hf_model_type(model)
    family = get_family(adapter_type(cfg.type).family)
    if mt not in family.default_targets:
        raise ModelError(f"no default {family.name} targets for model type '{mt}'; set adapter.target_modules")
    return family.default_targets[mt]


def peft_config(model: MultiTaskClassifier, cfg: AdapterConfig, train_heads: bool = True):
    """The PEFT config for ``cfg`` on ``model`` (task heads saved with the adapter)."""
    heads = getattr(model, "heads", None)
    save = [f"heads.{i}" for i in range(len(heads))] if train_heads and heads is not None else None
    return get_family(adapter_type(cfg.type).family).peft_config(cfg, _targets(model, cfg), save)


def attach_adapter(
    model: MultiTaskClassifier, cfg: AdapterConfig, *, seed: int = 0, train_heads: bool = True
) -> PeftModel:
    """Wrap ``model`` with a fresh adapter (seeded init). Only adapter (and head) params train."""
    kind = adapter_type(cfg.type)
    if kind.quantized and not is_quantized(model):
        raise ModelError(f"adapter type '{cfg.type}' needs a 4-bit base: build the model with quantize=True")
    family = get_family(kind.family)
    if family.check is not None:
        family.check(model, cfg, _targets(model, cfg))
    torch.manual_seed(seed)
    return get_peft_model(model, peft_config(model, cfg, train_heads))


def is_quantized(model: nn.Module) -> bool:
    try:
        import bitsandbytes as bnb
    except ImportError:  # pragma: no cover - bitsandbytes is a dependency
        return False
    return any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def regularization_loss(model: nn.Module, cfg: AdapterConfig) -> torch.Tensor | None:
    """The adapter's own training penalty (MPLoRA's λ·orthogonality), or None."""
    family = get_family(adapter_type(cfg.type).family)
    return family.penalty(model, cfg) if family.penalty is not None else None


def prepare_to_load(adapter_type_name: str) -> None:
    """Whatever PEFT needs before it can load a saved adapter of this type (our tuners register)."""
    family = get_family(adapter_type(adapter_type_name).family)
    if family.before_load is not None:
        family.before_load()


def adapter_parameters(model: nn.Module, include_heads: bool = False) -> Iterator[tuple[str, nn.Parameter]]:
    """Trainable adapter parameters (by name), optionally with the task heads."""
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if not include_heads and ".heads." in f".{name}":
            continue
        yield name, p


def count_parameters(model: nn.Module, include_heads: bool = False) -> int:
    return sum(p.numel() for _, p in adapter_parameters(model, include_heads))


def save_adapter(model: PeftModel, cfg: AdapterConfig, directory: str | Path, extra: dict | None = None) -> Path:
    """Atomically write the adapter (PEFT layout, safetensors) and our sidecar."""
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        meta = {"adapter": cfg.model_dump(mode="json")}
        base = model.base_model.model if hasattr(model.base_model, "model") else model
        if isinstance(base, MultiTaskClassifier):
            meta["tasks"] = [{"name": t.name, "labels": list(t.labels), "verbalizer": t.verbalizer} for t in base.tasks]
        meta.update(extra or {})
        (tmp / SIDE_CAR).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def read_adapter_meta(directory: str | Path) -> dict:
    path = Path(directory) / SIDE_CAR
    if not path.is_file():
        raise ModelError(f"{directory} is not an elora adapter directory (no {SIDE_CAR})")
    return json.loads(path.read_text())


def load_adapter(base: MultiTaskClassifier, directory: str | Path, *, trainable: bool = False) -> PeftModel:
    """Load a saved adapter onto ``base`` (built with the same model and tasks)."""
    directory = Path(directory)
    if not (directory / "adapter_model.safetensors").is_file():
        raise ModelError(f"{directory}: adapter_model.safetensors not found (only safetensors weights are loaded)")
    meta = read_adapter_meta(directory)
    if "tasks" in meta:
        want = [t["name"] for t in meta["tasks"]]
        have = [t.name for t in base.tasks]
        if want != have:
            raise ModelError(f"{directory}: adapter was trained for tasks {want}, the model has {have}")
    prepare_to_load(meta["adapter"]["type"])

    return PeftModel.from_pretrained(base, str(directory), is_trainable=trainable)
