"""The PEFT tuner that swaps target projections for :class:`BottleneckLayer`."""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTuner

from .layer import BottleneckLayer

_BERT = [r".*layer\.\d+\.attention\.output\.dense", r".*layer\.\d+\.output\.dense"]
_LLAMA = ["o_proj", "down_proj"]

# Houlsby placement per HF model_type: after the attention output and the FFN output.
DEFAULT_BOTTLENECK_TARGETS: dict[str, list[str] | str] = {
    "bert": "|".join(_BERT),
    "roberta": "|".join(_BERT),
    "distilbert": r".*layer\.\d+\.(attention\.out_lin|ffn\.lin2)",
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
}


class BottleneckModel(BaseTuner):
    prefix: str = "bottleneck_"
    tuner_layer_cls = BottleneckLayer
    target_module_mapping = DEFAULT_BOTTLENECK_TARGETS

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs) -> None:
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, peft_config)
            return
        new_module = BottleneckLayer(target, adapter_name, peft_config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)
