"""The bottleneck layer: wraps a projection and adds a residual bottleneck on its output."""

from __future__ import annotations

import torch
from torch import nn
from peft.tuners.tuners_utils import BaseTunerLayer

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def out_features_of(layer: nn.Module) -> int:
    n = getattr(layer, "out_features", None)
    if n is None:
        raise ValueError(f"bottleneck adapters wrap linear layers; {type(layer).__name__} has no out_features")
    return int(n)


class BottleneckLayer(nn.Module, BaseTunerLayer):
    """y = base(x); y + up(act(down(dropout(y)))) for each active adapter.

    Houlsby placement: wrapping the attention-output and FFN-output projections puts the
    adapter after them and before the residual + LayerNorm of the host block. ``up`` is zero
    at init, so the adapted model equals the base model exactly. Works over ``nn.Linear`` and
    bitsandbytes ``Linear4bit`` (QAdapter); adapter weights are float32.
    """

    adapter_layer_names = ("bottleneck_down", "bottleneck_up")
    other_param_names = ("bottleneck_act", "bottleneck_dropout")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.bottleneck_down = nn.ModuleDict({})
        self.bottleneck_up = nn.ModuleDict({})
        self.bottleneck_act = nn.ModuleDict({})
        self.bottleneck_dropout = nn.ModuleDict({})
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.out_features = out_features_of(base_layer)
        self.in_features = getattr(base_layer, "in_features", None)
        self.update_layer(adapter_name, config)
        self._active_adapter = adapter_name

    def update_layer(self, adapter_name: str, config) -> None:
        d = self.out_features
        b = config.bottleneck_size or max(1, d // config.reduction_factor)
        down, up = nn.Linear(d, b), nn.Linear(b, d)
        nn.init.normal_(down.weight, std=config.init_scale)
        nn.init.zeros_(down.bias)
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)
        self.bottleneck_down[adapter_name] = down
        self.bottleneck_up[adapter_name] = up
        self.bottleneck_act[adapter_name] = ACTIVATIONS[config.non_linearity]()
        self.bottleneck_dropout[adapter_name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.set_adapter(self.active_adapters if hasattr(self, "_active_adapter") else [adapter_name])

    def merge(self, *args, **kwargs) -> None:
        raise NotImplementedError("bottleneck adapters are non-linear and cannot be merged into the base weights")

    def unmerge(self) -> None:
        raise NotImplementedError("bottleneck adapters are never merged")

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return y
        for name in self.active_adapters:
            if name not in self.bottleneck_down:
                continue
            down = self.bottleneck_down[name]
            h = self.bottleneck_dropout[name](y.to(down.weight.dtype))
            y = y + self.bottleneck_up[name](self.bottleneck_act[name](down(h))).to(y.dtype)
        return y

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()
