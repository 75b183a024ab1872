"""One run adapter → a standard PEFT adapter on the plain Hugging Face base model.

Run adapters are saved on our multi-task wrapper: the encoder's backbone is its ``backbone``
attribute and the decoder's causal LM its ``lm`` attribute, so PEFT saved their keys as
``base_model.model.backbone.<module>...`` / ``base_model.model.lm.<module>...``, and the encoder's
task heads (``modules_to_save``) as ``base_model.model.heads.<i>.{weight,bias}``. The export renames
the adapter keys to ``base_model.model.<module>...`` (what ``PeftModel.from_pretrained`` on
``AutoModel`` / ``AutoModelForCausalLM`` expects), moves the heads to ``heads.safetensors`` keyed
``<task>.weight`` / ``<task>.bias``, and rewrites ``adapter_config.json`` for the plain base:
``base_model_name_or_path`` → the base directory, no ``auto_mapping`` (our wrapper class), no
``modules_to_save`` (the heads are not part of the base), ``task_type`` for the plain base;
``target_modules``, rank, alpha, dropout and the rest unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..errors import ModelError

PEFT_PREFIX = "base_model.model."
WRAPPER_ATTRIBUTE = {"encoder": "backbone", "decoder": "lm"}
"""Where our wrapper keeps the Hugging Face model (``EncoderClassifier.backbone``, ``DecoderClassifier.lm``)."""
TASK_TYPE = {"encoder": "FEATURE_EXTRACTION", "decoder": "CAUSAL_LM"}
STANDARD_PEFT_TYPES = {"LORA"}
"""PEFT types a stock PEFT install loads (``lora``, ``qlora`` and ``mplora`` all save as LoRA)."""


def convert_adapter(src: Path, dst: Path, *, kind: str, tasks: list[str], base_model_path: str,
                    fallback_heads: dict | None = None) -> dict:
    """Write ``src`` (a run adapter) as a plain-base PEFT adapter in ``dst``; returns what was written:
    ``{"peft_type", "tensors", "heads"}``. ``fallback_heads``: ``{i.weight: tensor}`` of the probed heads,
    used when an encoder adapter was saved without its own heads."""
    weights_path = src / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise ModelError(f"{src}: adapter_model.safetensors not found (only safetensors weights are exported)")
    config = json.loads((src / "adapter_config.json").read_text())
    inner = PEFT_PREFIX + WRAPPER_ATTRIBUTE[kind] + "."
    heads_prefix = PEFT_PREFIX + "heads."
    state = load_file(str(weights_path))
    adapter, heads = {}, {}
    for key, tensor in state.items():
        if key.startswith(inner):
            adapter[PEFT_PREFIX + key[len(inner):]] = tensor
        elif kind == "encoder" and key.startswith(heads_prefix):
            index, _, param = key[len(heads_prefix):].partition(".")
            if not index.isdigit() or int(index) >= len(tasks) or param not in ("weight", "bias"):
                raise ModelError(f"{weights_path}: unexpected head tensor {key!r}")
            heads[f"{tasks[int(index)]}.{param}"] = tensor
        else:
            raise ModelError(f"{weights_path}: tensor {key!r} is outside the {WRAPPER_ATTRIBUTE[kind]!r} model; "
                             "it has no place on the plain Hugging Face base model")
    if not adapter:
        raise ModelError(f"{weights_path}: no adapter tensors under {inner!r}")
    if kind == "encoder" and not heads:
        if not fallback_heads:
            raise ModelError(f"{src}: the adapter carries no task heads and the run has no probed heads to use")
        heads = {f"{tasks[int(k.split('.')[0])]}.{k.split('.')[1]}": v for k, v in fallback_heads.items()}
    if kind == "encoder" and len(heads) != 2 * len(tasks):
        raise ModelError(f"{src}: heads for {len(heads) // 2} of the run's {len(tasks)} tasks")
    dst.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in adapter.items()}, str(dst / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    if heads:
        save_file({k: v.contiguous() for k, v in heads.items()}, str(dst / "heads.safetensors"), metadata={"format": "pt"})
    (dst / "adapter_config.json").write_text(json.dumps(plain_config(config, kind, base_model_path), indent=2) + "\n")
    return {"peft_type": config.get("peft_type"), "tensors": len(adapter), "heads": bool(heads)}


def plain_config(config: dict, kind: str, base_model_path: str) -> dict:
    """``adapter_config.json`` for the plain base model (see the module docstring)."""
    out = dict(config)
    out["base_model_name_or_path"] = base_model_path
    out["auto_mapping"] = None
    out["modules_to_save"] = None
    out["task_type"] = TASK_TYPE[kind]
    prefix = WRAPPER_ATTRIBUTE[kind] + "."
    targets = out.get("target_modules")
    if isinstance(targets, list):  # a full module path given in adapter.target_modules names the wrapper's attribute
        out["target_modules"] = [t[len(prefix):] if t.startswith(prefix) else t for t in targets]
    elif isinstance(targets, str) and prefix in targets:
        raise ModelError(f"adapter target_modules regex {targets!r} names the wrapper's {prefix!r}: "
                         "it would match no module of the plain base model")
    return out
