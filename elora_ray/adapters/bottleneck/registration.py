"""Registering a new method with PEFT 0.21.

``peft.utils.register_peft_method`` only accepts names that already exist in the
``PeftType`` enum, which is closed. We add the member ``BOTTLENECK`` to the enum (the same
three tables ``enum`` itself fills: member map, value map and member names), once and
idempotently, and then register the config and model classes. After that PEFT's own
``save_pretrained`` / ``PeftModel.from_pretrained`` handle the method like a built-in one.
"""

from __future__ import annotations

from peft.utils.peft_types import PeftType

NAME = "BOTTLENECK"


def ensure_peft_type() -> PeftType:
    if NAME in PeftType.__members__:
        return PeftType[NAME]
    member = str.__new__(PeftType, NAME)
    member._name_ = NAME
    member._value_ = NAME
    member.__objclass__ = PeftType
    member.__init__(NAME)
    PeftType._member_map_[NAME] = member
    PeftType._value2member_map_[NAME] = member
    PeftType._member_names_.append(NAME)
    return member


def register(config_cls, model_cls) -> None:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method

    peft_type = ensure_peft_type()
    if PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type) is config_cls:
        return
    register_peft_method(name=NAME.lower(), config_cls=config_cls, model_cls=model_cls, prefix="bottleneck_")
