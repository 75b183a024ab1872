"""One interface over every adapter type: attach, regularise, save and load.

=========  ==============================================  =======================
type       what                                            built on
=========  ==============================================  =======================
lora       low-rank update B A on the attention q, v       PEFT ``LoraConfig``
qlora      LoRA over a 4-bit (nf4) quantised backbone      PEFT + bitsandbytes
adapter    Houlsby bottleneck after attention/FFN outputs  our PEFT tuner
qadapter   bottleneck adapter over a 4-bit backbone        our PEFT tuner + bnb
mplora     multi-path LoRA with orthogonality loss         PEFT LoRA + penalty
=========  ==============================================  =======================

Saved adapters use PEFT's layout (``adapter_config.json`` + ``adapter_model.safetensors``)
plus ``elora_adapter.json`` recording our adapter config and the tasks, so a directory can
be reloaded onto a freshly built base model. Weights are only ever read from safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from ..config import AdapterConfig
from ..errors import ModelError
from ..io import atomic_path
from ..models.classifier import MultiTaskClassifier
from .mplora import orthogonality_loss

SIDE_CAR = "elora_adapter.json"
QUANTIZED_TYPES = {"qlora", "qadapter"}
LORA_TYPES = {"lora", "qlora", "mplora"}

DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
}


def needs_quantized_base(cfg: AdapterConfig) -> bool:
    return cfg.type in QUANTIZED_TYPES


def _hf_model_type(model: MultiTaskClassifier) -> str:
    inner = getattr(model, "backbone", None) or getattr(model, "lm", None)
    return getattr(getattr(inner, "config", None), "model_type", "")


def _targets(model: MultiTaskClassifier, cfg: AdapterConfig) -> list[str] | str:
    if cfg.target_modules:
        return list(cfg.target_modules)
    mt = _hf_model_type(model)
    if cfg.type in LORA_TYPES:
        if mt not in DEFAULT_LORA_TARGETS:
            raise ModelError(f"no default LoRA targets for model type '{mt}'; set adapter.target_modules")
        return DEFAULT_LORA_TARGETS[mt]
    from .bottleneck import DEFAULT_BOTTLENECK_TARGETS

    if mt not in DEFAULT_BOTTLENECK_TARGETS:
        raise ModelError(f"no default bottleneck targets for model type '{mt}'; set adapter.target_modules")
    return DEFAULT_BOTTLENECK_TARGETS[mt]


def peft_config(model: MultiTaskClassifier, cfg: AdapterConfig, train_heads: bool = True):
    """The PEFT config for ``cfg`` on ``model`` (task heads saved with the adapter)."""
    heads = getattr(model, "heads", None)
    save = [f"heads.{i}" for i in range(len(heads))] if train_heads and heads is not None else None
    targets = _targets(model, cfg)
    if cfg.type in LORA_TYPES:
        return LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha if cfg.alpha is not None else 2 * cfg.rank,
            lora_dropout=cfg.dropout,
            target_modules=targets,
            modules_to_save=save,
            bias="none",
        )
    from .bottleneck import BottleneckConfig

    return BottleneckConfig(
        target_modules=targets,
        reduction_factor=cfg.reduction_factor,
        dropout=cfg.dropout,
        modules_to_save=save,
    )


def attach_adapter(
    model: MultiTaskClassifier, cfg: AdapterConfig, *, seed: int = 0, train_heads: bool = True
) -> PeftModel:
    """Wrap ``model`` with a fresh adapter (seeded init). Only adapter (and head) params train."""
    if cfg.type in QUANTIZED_TYPES and not is_quantized(model):
        raise ModelError(f"adapter type '{cfg.type}' needs a 4-bit base: build the model with quantize=True")
    if cfg.type == "mplora":
        targets = _targets(model, cfg)
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear) and name.split(".")[-1] in targets and m.out_features % cfg.paths:
                raise ModelError(
                    f"adapter.paths={cfg.paths}: layer {name} has {m.out_features} outputs, not divisible "
                    "into equal paths (MPLoRA's B_i^T B_j needs equal blocks); choose a divisor"
                )
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
    if cfg.type == "mplora" and cfg.orth_lambda > 0:
        return cfg.orth_lambda * orthogonality_loss(model, cfg.paths)
    return None


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
    if meta["adapter"]["type"] == "adapter" or meta["adapter"]["type"] == "qadapter":
        from . import bottleneck  # noqa: F401  registers the PEFT method

    return PeftModel.from_pretrained(base, str(directory), is_trainable=trainable)
