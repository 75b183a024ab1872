"""The PEFT tuner that swaps target projections for :class:`BottleneckLinear`."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import BottleneckConfig
from .layer import BottleneckLayer, BottleneckLinear

# BERT-style encoders: ``<...>.layer.<i>.attention.output.dense`` (attention output) and
# ``<...>.layer.<i>.output.dense`` (FFN output); NOT ``intermediate.dense`` (FFN input) nor ``pooler.dense``.
# A string is a full-match regex for PEFT, so the ``layer.<i>`` anchor keeps other ``output.dense`` out.
_BERT_LIKE = r"(?:.*\.)?layer\.\d+\.(?:attention\.output|output)\.dense"
# DistilBERT: ``transformer.layer.<i>.attention.out_lin`` and ``transformer.layer.<i>.ffn.lin2``.
_DISTILBERT = r"(?:.*\.)?layer\.\d+\.(?:attention\.out_lin|ffn\.lin2)"
# Llama-style decoders: attention output and MLP output projections (suffix match).
_LLAMA_LIKE = ["o_proj", "down_proj"]

# Houlsby placement per Hugging Face ``config.model_type``: after the attention-output and the
# FFN-output projection of every block, before the block's residual (+ LayerNorm). Values are PEFT
# ``target_modules``: a list of names / suffixes, or one full-match regex string.
DEFAULT_BOTTLENECK_TARGETS: dict[str, list[str] | str] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "distilbert": _DISTILBERT,
    "llama": list(_LLAMA_LIKE),
    "mistral": list(_LLAMA_LIKE),
    "qwen2": list(_LLAMA_LIKE),
}


def disable_bnb_cpu_weight_packing(model: nn.Module) -> int:
    """Keep bitsandbytes ``Linear4bit`` layers of ``model`` on their autograd-safe CPU path.

    bitsandbytes 0.50 on CPUs with AVX512-BF16: the first forward of a ``Linear4bit`` in eval mode
    whose input does not require grad permanently repacks the weight for a fast ``gemv_4bit``
    kernel. That kernel has no autograd support, so any later *training* backward through the layer
    silently drops the gradient w.r.t. its input (torch only warns "autograd kernel was not
    registered"): adapters below a packed layer get wrong gradients. The repacking also crashes when
    ``in_features`` is not a multiple of the 64-block size ("shape '[N, 0]' is invalid").

    This turns the repacking off (``support_avx512bf16_for_cpu = False``, the switch bitsandbytes
    itself consults) on every ``Linear4bit`` -- targeted or not, since gradients flow through all of
    them -- and unpacks weights that were already repacked (lossy: the packing rounded absmax to
    bf16, so outputs can differ slightly from before; bitsandbytes' own inverse also mis-orders a
    non-nested absmax, which is corrected here). Only CPU inference
    speed is affected; GPU execution is unchanged. Returns the number of layers unpacked.
    """
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:  # a model with Linear4bit layers has necessarily imported bitsandbytes
        return 0
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    unpacked = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        quant_state = getattr(module.weight, "quant_state", None)
        if quant_state is not None and getattr(quant_state, "packing_format_for_cpu", False):
            module.weight.data, quant_state = _convert_weight_packed_for_cpu_inverse(module.weight.data, quant_state)
            if not quant_state.nested and quant_state.absmax.dim() == 2:
                # bitsandbytes 0.50's inverse restores the nested case only: a non-nested absmax is left in
                # the packed [K / blocksize, N] (transposed, bf16) layout, which scrambles the weights as
                # soon as K > blocksize. Put it back in the flat [N * K / blocksize] float32 order.
                quant_state.absmax = quant_state.absmax.T.reshape(-1).to(torch.float32).contiguous()
            module.weight.quant_state = quant_state
            unpacked += 1
    if unpacked:
        warnings.warn(
            f"{unpacked} bitsandbytes Linear4bit layer(s) had been repacked for CPU inference (an eval-mode "
            "no-grad forward ran before the adapter was attached) and were unpacked so gradients flow through "
            "them; the unpacking is lossy (bf16 absmax), so base outputs may differ slightly from before.",
            stacklevel=2,
        )
    return unpacked


class BottleneckModel(BaseTuner):
    """Houlsby bottleneck adapters as a PEFT tuner (use through ``peft.get_peft_model``).

    Example::

        from peft import get_peft_model
        from elora_ray.adapters.bottleneck import BottleneckConfig

        model = get_peft_model(base, BottleneckConfig(reduction_factor=16))  # default targets by model_type
    """

    prefix: str = "bottleneck_"
    tuner_layer_cls = BottleneckLayer
    target_module_mapping = DEFAULT_BOTTLENECK_TARGETS

    def _pre_injection_hook(self, model: nn.Module, config: BottleneckConfig, adapter_name: str) -> None:
        # QAdapter on CPU: see disable_bnb_cpu_weight_packing (bitsandbytes repacking breaks autograd).
        disable_bnb_cpu_weight_packing(model)

    def _create_and_replace(
        self,
        peft_config: BottleneckConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, peft_config)
            return
        new_module = self._create_new_module(peft_config, adapter_name, target)
        if adapter_name not in self.active_adapters:
            # adding an additional adapter: it is not automatically trainable
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    @staticmethod
    def _create_new_module(peft_config: BottleneckConfig, adapter_name: str, target: nn.Module) -> BottleneckLinear:
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        # nn.Linear covers its subclasses, including bitsandbytes Linear4bit / Linear8bitLt.
        if not isinstance(base, (nn.Linear, Conv1D)):
            raise ValueError(
                f"Target module {type(base).__name__} is not supported by bottleneck adapters; "
                "target linear projections (torch.nn.Linear, bitsandbytes Linear4bit, transformers Conv1D)."
            )
        return BottleneckLinear(target, adapter_name, peft_config)
