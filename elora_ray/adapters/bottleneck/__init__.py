"""Houlsby bottleneck adapter as a PEFT method (PEFT 0.21 has none); QAdapter = the same over a 4-bit base.

Importing this package registers the method with PEFT (once, idempotently), after which the usual
PEFT entry points handle it like a built-in method::

    from peft import PeftModel, get_peft_model
    from elora_ray.adapters.bottleneck import BottleneckConfig

    model = get_peft_model(base, BottleneckConfig(reduction_factor=16))
    model.save_pretrained(d)                 # adapter_config.json ("peft_type": "BOTTLENECK") + safetensors
    PeftModel.from_pretrained(fresh_base, d)  # needs this package imported first

Registration = ``PeftType.BOTTLENECK`` (added to PEFT's closed enum by
:func:`~.config.ensure_bottleneck_peft_type`) + ``peft.utils.register_peft_method(name="bottleneck")``,
which fills ``PEFT_TYPE_TO_CONFIG_MAPPING`` (used by ``PeftConfig.from_pretrained`` /
``PeftModel.from_pretrained`` to map the saved ``peft_type`` string back to :class:`BottleneckConfig`),
``PEFT_TYPE_TO_TUNER_MAPPING`` (-> :class:`BottleneckModel`) and ``PEFT_TYPE_TO_PREFIX_MAPPING``
(-> ``"bottleneck_"``).
"""

from __future__ import annotations

import threading

from .config import BottleneckConfig, ensure_bottleneck_peft_type
from .layer import BottleneckLayer, BottleneckLinear
from .model import DEFAULT_BOTTLENECK_TARGETS, BottleneckModel, disable_bnb_cpu_weight_packing

PEFT_METHOD_NAME = "bottleneck"

_REGISTER_LOCK = threading.Lock()


def _same_class(a: type | None, b: type) -> bool:
    # Identity, or the same class re-created by a module reload (same module path and qualname).
    return a is b or (a is not None and (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__))


def register_bottleneck_method() -> None:
    """Register the bottleneck method with PEFT; a no-op when it is already registered.

    ``register_peft_method`` raises ``KeyError`` on a second call, so we check PEFT's mapping
    tables first. If the entries belong to an older copy of our own classes (e.g. after
    ``importlib.reload``) they are repointed to the current ones; if they belong to somebody
    else's ``BOTTLENECK`` method we refuse rather than silently hijack it.
    """
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    with _REGISTER_LOCK:
        peft_type = ensure_bottleneck_peft_type()
        config_cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
        model_cls = PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type)
        if config_cls is None and model_cls is None:
            register_peft_method(
                name=PEFT_METHOD_NAME,
                config_cls=BottleneckConfig,
                model_cls=BottleneckModel,
                prefix=BottleneckModel.prefix,
            )
            return
        if _same_class(config_cls, BottleneckConfig) and _same_class(model_cls, BottleneckModel):
            PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = BottleneckConfig
            PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = BottleneckModel
            PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = BottleneckModel.prefix
            return
        raise RuntimeError(
            f"PEFT already has a different method registered as {peft_type.value!r} "
            f"(config {config_cls!r}, model {model_cls!r}); refusing to overwrite it"
        )


register_bottleneck_method()

__all__ = [
    "DEFAULT_BOTTLENECK_TARGETS",
    "BottleneckConfig",
    "BottleneckLayer",
    "BottleneckLinear",
    "BottleneckModel",
    "disable_bnb_cpu_weight_packing",
    "ensure_bottleneck_peft_type",
    "register_bottleneck_method",
]
