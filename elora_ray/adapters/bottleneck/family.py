"""The bottleneck adapter family (``adapter``, ``qadapter``) on our PEFT tuner."""

from __future__ import annotations

from ...config import AdapterConfig
from ..families import AdapterFamily, register_family
from . import DEFAULT_BOTTLENECK_TARGETS, BottleneckConfig, register_bottleneck_method


def bottleneck_config(cfg: AdapterConfig, targets: list[str] | str, save: list[str] | None) -> BottleneckConfig:
    return BottleneckConfig(target_modules=targets, reduction_factor=cfg.reduction_factor, dropout=cfg.dropout,
                            modules_to_save=save)


BOTTLENECK = register_family(AdapterFamily("bottleneck", bottleneck_config, dict(DEFAULT_BOTTLENECK_TARGETS),
                                           before_load=register_bottleneck_method))
