"""The adapter types, as data: one registration per type says everything the stages need.

The config (``adapter.type``), featurize (which side of the adapter is zero at init, so its
per-sample gradients carry the first-order effect), the baselines (4-bit counterpart), the
predictor (mixed batches), the sharpness analysis (sized by rank) and the adapter builder
(``family``: the implementation in :mod:`elora_ray.adapters`) all read this table and
nothing else. This module imports nothing heavy, so the config can validate against it.

Adding a type of an existing family (say LoRA with another default): one :func:`register`
call below. Adding a new family: one module in ``elora_ray/adapters/`` that registers its
implementation with :func:`elora_ray.adapters.families.family`, plus one :func:`register`
call here naming it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdapterType:
    name: str
    """The value of ``adapter.type``."""
    summary: str
    family: str
    """Implementation in :mod:`elora_ray.adapters` (``lora``, ``mplora``, ``bottleneck``)."""
    zero_side: tuple[str, ...]
    """Module names of the adapter's output side, zero at init (LoRA's B, the bottleneck's up)."""
    input_side: tuple[str, ...]
    """Module names of the other side (random at init)."""
    quantized: bool = False
    """Needs a 4-bit (bitsandbytes) base model."""
    sized_by_rank: bool = True
    """``adapter.rank`` sets its size (else ``adapter.reduction_factor``)."""
    mixed_batch: bool = False
    """:class:`~elora_ray.ensemble.predictor.EnsemblePredictor` can serve several of them in one batch."""
    quantized_counterpart: str | None = None
    """The same adapter over a 4-bit base (the ``single_qlora`` baseline), if any."""


ADAPTER_TYPES: dict[str, AdapterType] = {}


def register(t: AdapterType) -> AdapterType:
    if t.name in ADAPTER_TYPES:
        raise ValueError(f"adapter type {t.name!r} is registered twice")
    ADAPTER_TYPES[t.name] = t
    return t


def adapter_type(name: str) -> AdapterType:
    try:
        return ADAPTER_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown adapter type {name!r}; known: {', '.join(ADAPTER_TYPES)}") from None


def zero_side_modules() -> tuple[str, ...]:
    """Output-side module names of every registered type (what featurize differentiates)."""
    return tuple(dict.fromkeys(m for t in ADAPTER_TYPES.values() for m in t.zero_side))


def input_side_modules() -> tuple[str, ...]:
    return tuple(dict.fromkeys(m for t in ADAPTER_TYPES.values() for m in t.input_side))


LORA_SIDES = {"zero_side": ("lora_B",), "input_side": ("lora_A",)}
BOTTLENECK_SIDES = {"zero_side": ("bottleneck_up",), "input_side": ("bottleneck_down",)}

register(AdapterType("lora", "low-rank update B A on the attention q, v (PEFT LoraConfig)", "lora",
                     mixed_batch=True, quantized_counterpart="qlora", **LORA_SIDES))
register(AdapterType("qlora", "LoRA over a 4-bit (nf4) quantised backbone (PEFT + bitsandbytes)", "lora",
                     quantized=True, mixed_batch=True, **LORA_SIDES))
register(AdapterType("mplora", "multi-path LoRA with an orthogonality loss between the paths", "mplora", **LORA_SIDES))
register(AdapterType("adapter", "Houlsby bottleneck after attention/FFN outputs (our PEFT tuner)", "bottleneck",
                     sized_by_rank=False, quantized_counterpart="qadapter", **BOTTLENECK_SIDES))
register(AdapterType("qadapter", "bottleneck adapter over a 4-bit backbone (our PEFT tuner + bitsandbytes)", "bottleneck",
                     quantized=True, sized_by_rank=False, **BOTTLENECK_SIDES))
