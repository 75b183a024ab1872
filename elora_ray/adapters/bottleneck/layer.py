"""The bottleneck tuner layer: wraps a projection and adds a residual bottleneck on its output."""

from __future__ import annotations

from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, _get_in_out_features
from torch import nn

from .config import BottleneckConfig

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}

MERGE_ERROR = (
    "bottleneck adapters are non-linear (up(act(down(y))) on the layer output) and cannot be merged into "
    "the base weights; use unload() to drop them or keep the PeftModel for inference"
)


class BottleneckLayer(BaseTunerLayer):
    """Adapter state shared by bottleneck tuner layers (PEFT's ``XxxLayer`` mixin convention).

    Per adapter name: ``bottleneck_down[name]`` (d -> b, with bias), ``bottleneck_up[name]``
    (b -> d, with bias), ``bottleneck_act[name]`` and ``bottleneck_dropout[name]`` (no parameters).
    The trainable parameter count per wrapped projection is ``d*b + b + b*d + d``.
    """

    adapter_layer_names = ("bottleneck_down", "bottleneck_up")
    other_param_names = ("bottleneck_act", "bottleneck_dropout", "bottleneck_size")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.bottleneck_down = nn.ModuleDict({})
        self.bottleneck_up = nn.ModuleDict({})
        self.bottleneck_act = nn.ModuleDict({})
        self.bottleneck_dropout = nn.ModuleDict({})
        self.bottleneck_size: dict[str, int] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        in_features, out_features = _get_in_out_features(self.get_base_layer())
        if out_features is None:
            raise ValueError(
                f"bottleneck adapters wrap linear projections; cannot read out_features of "
                f"{type(self.get_base_layer()).__name__}"
            )
        self.in_features = in_features
        self.out_features = int(out_features)

    def update_layer(self, adapter_name: str, config: BottleneckConfig, **kwargs: Any) -> None:
        d = self.out_features
        b = config.bottleneck_for(d)
        # Adapter parameters are always float32, also over fp16/bf16/4-bit base layers.
        down = nn.Linear(d, b, bias=True, dtype=torch.float32)
        up = nn.Linear(b, d, bias=True, dtype=torch.float32)
        with torch.no_grad():
            if config.init_scale > 0:
                nn.init.normal_(down.weight, mean=0.0, std=config.init_scale)
            else:
                nn.init.zeros_(down.weight)
            nn.init.zeros_(down.bias)
            nn.init.zeros_(up.weight)  # up == 0  =>  the adapted layer equals the base layer exactly
            nn.init.zeros_(up.bias)
        self.bottleneck_down[adapter_name] = down
        self.bottleneck_up[adapter_name] = up
        self.bottleneck_act[adapter_name] = ACTIVATIONS[config.non_linearity]()
        self.bottleneck_dropout[adapter_name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.bottleneck_size[adapter_name] = b
        self._move_adapter_to_base_device(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _move_adapter_to_base_device(self, adapter_name: str) -> None:
        """Move the adapter to the base layer's device without changing its dtype (kept float32).

        PEFT's ``_move_adapter_to_device_of_base_layer`` would also cast to the base dtype (e.g. bf16,
        or the compute dtype of a 4-bit layer), which we do not want.
        """
        device, _ = self._get_base_layer_device_and_dtype(self.get_base_layer())
        if device is None or device.type == "meta":
            return
        for attr in ("bottleneck_down", "bottleneck_up"):
            container = getattr(self, attr)
            if any(p.device.type == "meta" for p in container[adapter_name].parameters()):
                continue
            container[adapter_name] = container[adapter_name].to(device)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        raise NotImplementedError(MERGE_ERROR)

    def unmerge(self) -> None:
        raise NotImplementedError(MERGE_ERROR)


class BottleneckLinear(nn.Module, BottleneckLayer):
    """A linear projection followed by Houlsby bottleneck adapter(s) on its output.

    ``y = base(x)``; for each active adapter ``a`` in order: ``y = y + up_a(act_a(down_a(dropout_a(y))))``
    (several active adapters are stacked). Wrapping the attention-output and FFN-output projections
    of a transformer block places the adapter after them and before the block's residual + LayerNorm
    (Houlsby et al., 2019). The base output is computed by the wrapped layer itself, so any
    ``nn.Linear`` subclass works, including bitsandbytes ``Linear4bit`` (QAdapter); the adapter runs
    in float32 on a float32 copy of ``y`` and its delta is cast back to ``y``'s dtype.
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: BottleneckConfig, **kwargs: Any) -> None:
        super().__init__()
        BottleneckLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return y
        for name in self.active_adapters:
            if name not in self.bottleneck_down:
                continue
            down = self.bottleneck_down[name]
            h = self.bottleneck_dropout[name](y.to(down.weight.dtype))
            delta = self.bottleneck_up[name](self.bottleneck_act[name](down(h)))
            y = y + delta.to(y.dtype)
        return y

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()
