"""Adapters behind one interface: LoRA, QLoRA, bottleneck Adapter, QAdapter, MPLoRA."""

from .api import (
    adapter_parameters,
    attach_adapter,
    count_parameters,
    load_adapter,
    needs_quantized_base,
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
    "orthogonality_loss",
    "read_adapter_meta",
    "regularization_loss",
    "save_adapter",
]
