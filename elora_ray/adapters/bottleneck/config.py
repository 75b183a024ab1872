"""Configuration of the Houlsby-style bottleneck adapter as a PEFT method.

PEFT 0.21 has no bottleneck adapter, and its ``PeftType`` enum is closed: ``register_peft_method``
refuses any name that is not already a member. :func:`ensure_bottleneck_peft_type` therefore adds
the member ``PeftType.BOTTLENECK`` (value ``"BOTTLENECK"``) at import time, exactly the way the
``enum`` machinery itself installs a member, once and idempotently. The config class below then uses
it as its ``peft_type``; ``adapter_config.json`` stores ``"peft_type": "BOTTLENECK"`` and PEFT maps that
string back to :class:`BottleneckConfig` through ``PEFT_TYPE_TO_CONFIG_MAPPING`` (filled by the
registration in ``__init__.py``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig
from peft.utils.peft_types import PeftType

PEFT_TYPE_NAME = "BOTTLENECK"
NON_LINEARITIES = ("relu", "gelu", "silu", "tanh")

_ENUM_LOCK = threading.Lock()


def ensure_bottleneck_peft_type() -> PeftType:
    """Return ``PeftType.BOTTLENECK``, adding it to PEFT's enum first if needed.

    Safe to call any number of times, from any module and thread: the member is created only if no
    member of that name exists (also covering a future PEFT that ships its own ``BOTTLENECK``, or
    another helper in this process that already added it). The steps mirror what Python 3.11's
    ``enum`` does for a member declared in the class body (``enum._proto_member.__set_name__``):

    1. build the instance with the enum's own constructor (``str.__new__`` for this ``str`` enum), so
       ``PeftType.BOTTLENECK == "BOTTLENECK"`` and it hashes like the plain string — PEFT's mapping
       dicts are looked up with the raw ``"peft_type"`` string read from ``adapter_config.json``;
    2. set ``_name_``/``_value_``/``__objclass__``/``_sort_order_`` (used by ``repr``, ``.name``,
       ``.value`` and pickling);
    3. make it a class attribute (``PeftType.BOTTLENECK``) — done *before* touching ``_member_map_``,
       because ``EnumType.__setattr__`` refuses to (re)assign names that are already members;
    4. record it in ``_member_map_`` (``PeftType["BOTTLENECK"]``, ``__members__``),
       ``_value2member_map_`` (``PeftType("BOTTLENECK")``) and ``_member_names_`` (iteration,
       ``len`` and ``"BOTTLENECK" in list(PeftType)``, which ``register_peft_method`` checks).
    """
    existing = PeftType._member_map_.get(PEFT_TYPE_NAME)
    if existing is not None:
        return existing
    with _ENUM_LOCK:
        existing = PeftType._member_map_.get(PEFT_TYPE_NAME)  # re-check under the lock
        if existing is not None:
            return existing
        member = PeftType._new_member_(PeftType, PEFT_TYPE_NAME)  # str.__new__ for a str-mixin enum
        member._name_ = PEFT_TYPE_NAME
        member._value_ = PEFT_TYPE_NAME
        member.__objclass__ = PeftType
        member.__init__(PEFT_TYPE_NAME)
        member._sort_order_ = len(PeftType._member_names_)
        if hasattr(PeftType, "_add_member_"):  # Python >= 3.13 installs the attribute + member map itself
            PeftType._add_member_(PEFT_TYPE_NAME, member)
        else:
            type.__setattr__(PeftType, PEFT_TYPE_NAME, member)
            PeftType._member_map_[PEFT_TYPE_NAME] = member
        PeftType._value2member_map_[PEFT_TYPE_NAME] = member
        PeftType._member_names_.append(PEFT_TYPE_NAME)
        return member


ensure_bottleneck_peft_type()


@dataclass
class BottleneckConfig(PeftConfig):
    """Configuration of a :class:`~elora_ray.adapters.bottleneck.BottleneckModel`.

    Each targeted projection ``f`` becomes ``y = f(x); y + up(act(down(dropout(y))))``.

    Args:
        target_modules: names of the projections to wrap, with PEFT's matching rules (a list of names
            matches exact names or ``.``-separated suffixes; a string is a regex that must match the
            full module name). ``None`` picks ``DEFAULT_BOTTLENECK_TARGETS[model_type]`` (Houlsby
            placement: attention-output and FFN-output projections).
        exclude_modules: names / regex of modules never to wrap.
        reduction_factor: bottleneck size = ``max(1, out_features // reduction_factor)``.
        bottleneck_size: fixed bottleneck size for every target (overrides ``reduction_factor``).
        non_linearity: ``relu`` | ``gelu`` | ``silu`` | ``tanh``.
        init_scale: std of the normal init of ``down.weight``; ``up`` (weight and bias) starts at 0,
            so the adapted model equals the base model exactly at init.
        dropout: dropout probability on the adapter input.
        modules_to_save: extra modules (e.g. task heads) trained and saved with the adapter.
    """

    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Module names (exact or suffix) or a full-match regex of the projections to wrap."},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or regex of modules not to wrap."}
    )
    reduction_factor: int = field(default=16, metadata={"help": "bottleneck = max(1, out_features // factor)"})
    bottleneck_size: Optional[int] = field(default=None, metadata={"help": "Fixed bottleneck size (overrides factor)."})
    non_linearity: str = field(default="gelu", metadata={"help": "relu | gelu | silu | tanh"})
    init_scale: float = field(default=1e-3, metadata={"help": "Std of the down-projection init."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter input."})
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Modules besides the adapters to train and save (e.g. classifier heads)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = ensure_bottleneck_peft_type()
        self.non_linearity = str(self.non_linearity).lower()
        if self.non_linearity not in NON_LINEARITIES:
            raise ValueError(f"non_linearity must be one of {NON_LINEARITIES}, got {self.non_linearity!r}")
        if int(self.reduction_factor) < 1:
            raise ValueError(f"reduction_factor must be >= 1, got {self.reduction_factor}")
        if self.bottleneck_size is not None and int(self.bottleneck_size) < 1:
            raise ValueError(f"bottleneck_size must be >= 1 or None, got {self.bottleneck_size}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if float(self.init_scale) < 0.0:
            raise ValueError(f"init_scale must be >= 0, got {self.init_scale}")
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)

    def bottleneck_for(self, out_features: int) -> int:
        """The bottleneck width used for a projection with ``out_features`` outputs."""
        if self.bottleneck_size is not None:
            return int(self.bottleneck_size)
        return max(1, int(out_features) // int(self.reduction_factor))
