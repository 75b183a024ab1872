"""How each adapter family is built on PEFT: one registered implementation per family.

A family (named by :attr:`elora_ray.adapter_types.AdapterType.family`) gives the PEFT config
for its targets, its default target modules per architecture, and optionally a check before
attaching, a training penalty and a set-up step before loading a saved adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..config import AdapterConfig
from ..errors import ModelError


@dataclass(frozen=True)
class AdapterFamily:
    name: str
    peft_config: Callable[[AdapterConfig, list[str] | str, list[str] | None], Any]
    """(adapter config, target modules, modules to save) → a PEFT config."""
    default_targets: dict[str, Any] = field(default_factory=dict)
    """HF ``model_type`` → target modules when ``adapter.target_modules`` is not set."""
    check: Callable[[nn.Module, AdapterConfig, list[str] | str], None] | None = None
    """Raises :class:`ModelError` when the model cannot take this adapter as configured."""
    penalty: Callable[[nn.Module, AdapterConfig], Any] | None = None
    """The adapter's own training penalty (a scalar tensor), or None."""
    before_load: Callable[[], None] | None = None
    """Run before PEFT loads a saved adapter of this family (e.g. registering our PEFT method)."""


FAMILIES: dict[str, AdapterFamily] = {}


def register_family(f: AdapterFamily) -> AdapterFamily:
    if f.name in FAMILIES:
        raise ValueError(f"adapter family {f.name!r} is registered twice")
    FAMILIES[f.name] = f
    return f


def _discover() -> None:
    """Import every module of :mod:`elora_ray.adapters`: each family module registers itself on import,
    so a new family is one new file here and nothing else to list."""
    import importlib
    import pkgutil

    from .. import adapters

    for info in pkgutil.walk_packages(adapters.__path__, f"{adapters.__name__}."):
        importlib.import_module(info.name)


def get_family(name: str) -> AdapterFamily:
    if name not in FAMILIES:
        _discover()
    try:
        return FAMILIES[name]
    except KeyError:
        raise ModelError(f"no implementation registered for adapter family {name!r}") from None
