"""Adapters behind one interface: LoRA, QLoRA, bottleneck Adapter, QAdapter, MPLoRA."""

from .api import (
    adapter_parameters,
    attach_adapter,
    count_parameters,
    load_adapter,
    needs_quantized_base,
    prepare_to_load,
    read_adapter_meta,
    regularization_loss,
    save_adapter,
)
from .mplora import orthogonality_loss

__all__ = [
    "adapter_parameters",
    "attach_adapter",
    "count_parameters",
    "load_adapter",
    "needs_quantized_base",
    "prepare_to_load",
    "orthogonality_loss",
    "read_adapter_meta",
    "regularization_loss",
    "save_adapter",
]
