"""Counting FLOPs of a forward (+ backward): PyTorch's ``FlopCounterMode`` plus the 4-bit
linear layers' forward matmuls it cannot see (bitsandbytes runs them in its own kernels; their
backward — dequantise, then a plain matmul — is visible and counted). Without this a QLoRA
model looks about half as expensive as it is."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


class FlopCounter:
    """``with FlopCounter(model) as c: ...`` then ``c.total``.

    The forward of each ``Linear4bit`` (2·in·out FLOPs per token) is added from a forward hook;
    ``tests/test_flops.py`` checks the total against the same model unquantised."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.extra = 0.0
        self._mode = FlopCounterMode(display=False)
        self._handles: list = []

    def _hook(self, module, args, output) -> None:
        x = args[0]
        tokens = x.numel() // max(1, module.in_features)
        f = 2.0 * tokens * module.in_features * module.out_features
        self.extra += f

    def __enter__(self) -> "FlopCounter":
        try:
            import bitsandbytes as bnb

            quantized = [m for m in self.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        except ImportError:  # pragma: no cover - bitsandbytes is a dependency
            quantized = []
        self._handles = [m.register_forward_hook(self._hook) for m in quantized]
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def total(self) -> float:
        return float(self._mode.get_total_flops()) + self.extra
