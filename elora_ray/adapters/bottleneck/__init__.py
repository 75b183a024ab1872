"""Houlsby bottleneck adapter as a PEFT method (PEFT 0.21 has none); QAdapter = same over 4-bit."""

from .config import BottleneckConfig
from .layer import BottleneckLayer
from .model import DEFAULT_BOTTLENECK_TARGETS, BottleneckModel
from .registration import register

register(BottleneckConfig, BottleneckModel)

__all__ = ["BottleneckConfig", "BottleneckLayer", "BottleneckModel", "DEFAULT_BOTTLENECK_TARGETS"]
