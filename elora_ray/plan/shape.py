"""The shape of a model and its adapter, read from ``config.json`` on the meta device (no weights).

Everything the memory plan needs — parameter counts by kind, layer sizes, the adapter's trainable
parameters and the width of the LoRA sites — comes from building the architecture with
``torch.device("meta")``: tensors with shapes and no storage, so an 8B or 70B config costs the
driver a second and a few MB. No weight file is opened (a directory with only ``config.json`` is
enough), and nothing is converted or downloaded.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import AdapterConfig, ModelConfig
from ..errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelShape:
    """Counts of a backbone and its adapter (elements, not bytes)."""

    name: str
    kind: str
    """``encoder`` or ``decoder``."""
    model_type: str
    parameters: int
    """Every backbone parameter (embeddings, layers, norms, LM head)."""
    quantizable_parameters: int
    """In the ``nn.Linear`` layers that 4-bit loading packs (all but the LM head / classifier)."""
    norm_parameters: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int
    adapter_parameters: int
    """Trainable parameters of the configured adapter on this backbone."""
    adapted_width: int
    """Σ (in + out features) over the adapted linear sites: what the ``full_rank`` sketch keeps per token."""
    adapter_type: str

    def to_dict(self) -> dict:
        return asdict(self)


def _config_dir(cfg: ModelConfig) -> tuple[Path | None, dict]:
    """Where ``config.json`` is for ``cfg`` without converting or loading weights: (directory, extra kwargs)."""
    name = cfg.name_or_path
    if name == "default":
        from ..models.minilm import minilm_dir

        return minilm_dir(), {}
    if name == "smollm2":
        from ..models.registry import cache_root
        from ..models.smollm2 import converted_dir, package_gguf

        target = converted_dir(cache_root(cfg))
        if (target / "config.json").is_file():
            return target, {}
        gguf = package_gguf()  # the GGUF's metadata carries the config; reading it loads no tensor
        return gguf.parent, {"gguf_file": gguf.name}
    if name.startswith("tiny-"):
        from ..models.registry import cache_root
        from ..models.tiny import tiny_model_dir

        return tiny_model_dir(name, cache_root(cfg)), {}
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise ModelError(f"model.name_or_path '{name}': no config.json there (the plan needs only that file; "
                         "known names: default, smollm2, tiny-bert, tiny-llama)")
    return path, {}


def load_config_only(cfg: ModelConfig):
    from transformers import AutoConfig

    path, extra = _config_dir(cfg)
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=cfg.trust_remote_code, **extra)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path
        raise ModelError(f"cannot read the model config in {path}: {exc}") from None


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or type(m).__name__.endswith(("RMSNorm", "LayerNorm"))


def model_shape(model_cfg: ModelConfig, adapter_cfg: AdapterConfig) -> ModelShape:
    """Build the backbone on the meta device, attach the configured adapter, count."""
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from ..adapter_types import adapter_type
    from ..adapters.families import get_family
    from ..models.registry import detect_kind

    hf_logging.set_verbosity_error()
    hf_cfg = load_config_only(model_cfg)
    kind = detect_kind(hf_cfg, model_cfg.kind)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        if kind == "decoder":
            backbone = AutoModelForCausalLM.from_config(hf_cfg, trust_remote_code=model_cfg.trust_remote_code)
        elif hf_cfg.model_type == "bert":
            backbone = AutoModel.from_config(hf_cfg, add_pooling_layer=False)
        else:
            backbone = AutoModel.from_config(hf_cfg, trust_remote_code=model_cfg.trust_remote_code)
    skip = {"lm_head", "pooler", "classifier"}
    total = sum(p.numel() for p in backbone.parameters())
    linear = sum(m.weight.numel() for n, m in backbone.named_modules()
                 if isinstance(m, nn.Linear) and not (set(n.split(".")) & skip))
    norms = sum(p.numel() for m in backbone.modules() if _is_norm(m) for p in m.parameters(recurse=False))
    text = hf_cfg.get_text_config() if hasattr(hf_cfg, "get_text_config") else hf_cfg
    hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0))
    inter = int(getattr(text, "intermediate_size", 0) or getattr(text, "n_inner", 0) or 4 * hidden)
    layers = int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0))
    heads = int(getattr(text, "num_attention_heads", 0) or getattr(text, "n_head", 0))
    vocab = int(getattr(text, "vocab_size", 0))

    kind_of = adapter_type(adapter_cfg.type)
    family = get_family(kind_of.family)
    targets = adapter_cfg.target_modules or family.default_targets.get(hf_cfg.model_type)
    if not targets:
        raise ModelError(f"no default {family.name} targets for model type '{hf_cfg.model_type}'; set adapter.target_modules")
    if family.before_load is not None:
        family.before_load()
    from peft import get_peft_model

    for p in backbone.parameters():
        p.requires_grad_(False)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(backbone, family.peft_config(adapter_cfg, targets, None))
    adapter = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    width = 0
    for m in peft_model.modules():
        base = getattr(m, "base_layer", None)
        if hasattr(m, "lora_A") and isinstance(base, nn.Linear):
            width += base.in_features + base.out_features
    return ModelShape(
        name=model_cfg.name_or_path, kind=kind, model_type=hf_cfg.model_type, parameters=total,
        quantizable_parameters=linear, norm_parameters=norms, hidden=hidden, intermediate=inter, layers=layers,
        heads=heads, vocab=vocab, adapter_parameters=adapter, adapted_width=width, adapter_type=adapter_cfg.type,
    )
