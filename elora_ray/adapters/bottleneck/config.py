"""Configuration of the Houlsby-style bottleneck adapter as a PEFT method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

from .registration import ensure_peft_type

BOTTLENECK = ensure_peft_type()


@dataclass
class BottleneckConfig(PeftConfig):
    """Bottleneck adapter: y = f(x) + up(act(down(f(x)))) after each target projection f.

    Args:
        target_modules: module names / regex (PEFT matching rules); default per architecture.
        reduction_factor: bottleneck size = max(1, out_features // reduction_factor).
        bottleneck_size: fixed bottleneck size (overrides reduction_factor).
        non_linearity: relu | gelu | silu | tanh.
        init_scale: std of the down-projection init; ``up`` starts at zero (identity at init).
        dropout: dropout on the adapter input.
    """

    target_modules: Optional[Union[list[str], str]] = field(default=None)
    exclude_modules: Optional[Union[list[str], str]] = field(default=None)
    modules_to_save: Optional[list[str]] = field(default=None)
    reduction_factor: int = field(default=16)
    bottleneck_size: Optional[int] = field(default=None)
    non_linearity: str = field(default="gelu")
    init_scale: float = field(default=1e-3)
    dropout: float = field(default=0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = BOTTLENECK
        if self.non_linearity not in ("relu", "gelu", "silu", "tanh"):
            raise ValueError(f"non_linearity must be relu, gelu, silu or tanh, got {self.non_linearity!r}")
        if self.reduction_factor < 1:
            raise ValueError("reduction_factor must be >= 1")
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
