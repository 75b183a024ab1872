"""LoRA and QLoRA: PEFT's ``LoraConfig`` (QLoRA is the same adapter over a 4-bit base)."""

from __future__ import annotations

from ..config import AdapterConfig
from .families import AdapterFamily, register_family

DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
}


def lora_config(cfg: AdapterConfig, targets: list[str] | str, save: list[str] | None):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha if cfg.alpha is not None else 2 * cfg.rank,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        modules_to_save=save,
        bias="none",
    )


LORA = register_family(AdapterFamily("lora", lora_config, DEFAULT_LORA_TARGETS))
