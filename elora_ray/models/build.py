"""Build a :class:`MultiTaskClassifier` from the model config, optionally 4-bit quantised."""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from ..config import ModelConfig
from ..errors import ModelError
from .classifier import MultiTaskClassifier, TaskSpec
from .registry import detect_kind, load_hf_config, resolve_model_dir

log = logging.getLogger(__name__)


def quantization_config(kind: str, quant_type: str = "nf4", compute_dtype: torch.dtype = torch.float32):
    """bitsandbytes 4-bit config; heads / lm_head stay in float (quantising them breaks them).
    ``compute_dtype``: what the 4-bit weights are dequantised to for each matmul (bf16 on GPUs with
    native bf16: :func:`compute_dtype_for`)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=["lm_head"] if kind == "decoder" else ["pooler", "classifier"],
    )


def compute_dtype_for(device: str | torch.device | None) -> torch.dtype:
    """4-bit layers dequantise to bf16 on a GPU with native bf16, to fp32 elsewhere (a CPU, where fp32 is
    what the rest of the model computes in)."""
    from .precision import native_bf16

    return torch.bfloat16 if device is not None and native_bf16(device) else torch.float32


def build_classifier(
    cfg: ModelConfig,
    tasks: Sequence[TaskSpec],
    *,
    quantize: bool = False,
    quant_type: str = "nf4",
    seed: int = 0,
    device: str | torch.device | None = None,
) -> MultiTaskClassifier:
    """Load the backbone from a local directory and add task heads (encoder) or verbalizers.

    The backbone is frozen; adapters and heads are made trainable by :mod:`elora_ray.adapters`.
    ``seed`` fixes the initialisation of the task heads. ``device``: where the backbone is loaded (a
    GPU: straight from the file, in ``model.dtype`` — ``auto`` is bf16 on GPUs that have it natively;
    a 4-bit backbone is quantised there with bf16 compute); the caller moves the rest (heads,
    adapters) there with :func:`elora_ray.models.placement.place_model`. On the CPU: float32.
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    path = resolve_model_dir(cfg)
    hf_cfg = load_hf_config(path, cfg.trust_remote_code)
    kind = detect_kind(hf_cfg, cfg.kind)
    from .precision import resolve_model_dtype

    target = torch.device(device) if device is not None else torch.device("cpu")
    kwargs = dict(local_files_only=True, trust_remote_code=cfg.trust_remote_code, dtype=resolve_model_dtype(cfg.dtype, target))
    if quantize:
        kwargs["quantization_config"] = quantization_config(kind, quant_type, compute_dtype_for(target))
        if target.type != "cpu" or torch.cuda.is_available():  # explicit (else bitsandbytes takes the current GPU)
            kwargs["device_map"] = {"": str(target) if target.index is not None else f"{target.type}:0"}
    elif target.type == "cuda":  # straight from the file onto the GPU, in its dtype: no host copy of the weights
        kwargs["device_map"] = {"": str(target) if target.index is not None else "cuda:0"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=cfg.trust_remote_code)
        if kind == "decoder":
            from .decoder import DecoderClassifier

            lm = AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True, **kwargs)
            model: MultiTaskClassifier = DecoderClassifier(lm, tokenizer, tasks, cfg.max_length)
        else:
            from .encoder import EncoderClassifier, pooling_mode

            torch.manual_seed(seed)
            backbone = AutoModel.from_pretrained(str(path), use_safetensors=True, add_pooling_layer=False, **kwargs) \
                if hf_cfg.model_type == "bert" else AutoModel.from_pretrained(str(path), use_safetensors=True, **kwargs)
            model = EncoderClassifier(backbone, tokenizer, tasks, cfg.max_length, pooling_mode(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model from {path}: {exc}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    if quantize:
        mark_quantized(model)
        disable_cpu_weight_packing(model)
        if target.type == "cpu":
            release_file_mapping(model)
    return model


def release_file_mapping(model: torch.nn.Module) -> None:
    """Copy a CPU 4-bit model's float tensors (embeddings, norms, heads) out of the memory-mapped
    safetensors file. They are views of it after loading, which keeps the whole mapping alive, and
    with it every float page read to quantise the layers: the process held the file's full float size
    on top of its 4-bit weights (before/after figures: ``benchmarks/memory_plan.py``, SmolLM2 QLoRA;
    test: ``tests/test_adapters.py::test_a_cpu_4bit_model_lets_go_of_its_float_file_once_loaded``)."""
    from .placement import is_quantized

    with torch.no_grad():
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is not None and not is_quantized(p):
                    p.data = p.data.clone()
            for name, b in list(module._buffers.items()):
                if b is not None:
                    module._buffers[name] = b.clone()


def mark_quantized(model: torch.nn.Module) -> None:
    """Tell PEFT (and anything that asks as transformers models answer) that the base is 4-bit.

    PEFT picks its bitsandbytes-aware LoRA layer (``peft.tuners.lora.bnb.Linear4bit``: merge and
    unmerge dequantise and requantise) only when the wrapped model says ``is_loaded_in_4bit``; our
    multi-task wrapper is not a transformers model, so without this PEFT wraps 4-bit layers in its
    generic LoRA layer, whose merge would add a float delta to packed 4-bit bytes.
    """
    model.is_loaded_in_4bit = True
    model.quantization_method = "bitsandbytes"


def disable_cpu_weight_packing(model: torch.nn.Module) -> int:
    """Keep bitsandbytes 4-bit layers in their trainable layout on CPU.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit`` weight the first time
    it runs in eval mode on an input that does not require grad. The packed path stores absmax
    in bfloat16 and its kernel (``gemv_4bit``) has no autograd formula, so later training
    passes get silently wrong input gradients (and an in-place error when a bias is present).
    We turn the repacking off; the standard dequantise-and-matmul path is exact and
    differentiable. Returns the number of layers touched.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:  # pragma: no cover
        return 0
    n = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n
