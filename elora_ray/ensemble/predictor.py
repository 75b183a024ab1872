"""``EnsemblePredictor``: load a finished run directory and predict on new text.

It rebuilds the base model once, loads every ensemble adapter into it as a named PEFT
adapter (safetensors only), and computes the ensemble exactly as the pipeline evaluated it:

    z(s) = Σ_j α_ij · [ z_base_j(s) + Σ_t c_jt · (z_jt(s) − z_θ*(s)) ]

Adapters with zero total weight for the task are skipped. For LoRA-family adapters all the
needed adapters run in *one* forward pass per batch: the batch is repeated once per adapter
and PEFT's mixed-adapter batches (``adapter_names=[...]``) route each copy through its own
adapter. Other adapter types (bottleneck adapters) fall back to one pass per adapter.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..adapter_types import ADAPTER_TYPES
from ..artifacts import read_prepared
from ..config import load_config
from ..errors import ConfigError, ModelError
from ..layout import RunLayout
from ..models.classifier import TaskSpec
from .members import load_members, load_weights

log = logging.getLogger(__name__)


class EnsemblePredictor:
    def __init__(self, run_dir: str | Path, device: str | torch.device = "cpu", batch_size: int = 32,
                 mixed_batches: bool | None = None, precision: str | None = None) -> None:
        """``precision``: ``fp32`` or ``bf16`` autocast for the forwards; default: the run's ``compute.precision``
        resolved on ``device``, the autocast its evaluated outputs were exported under (on the same hardware)."""
        from ..adapters import needs_quantized_base
        from ..artifacts import heads_path
        from ..featurize.model_at_init import load_heads
        from ..models.build import build_classifier
        from ..models.placement import place_model

        self.run_dir = Path(run_dir)
        cfg_path = self.run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} not found: not an elora run directory")
        self.cfg = load_config(cfg_path)
        self.tasks = {t.name: t for t in read_prepared(self.run_dir)}
        self.specs = [TaskSpec.of(t) for t in self.tasks.values()]
        self.members = load_members(self.run_dir)
        self.weights = {n: np.asarray(t["weights"], np.float64) for n, t in load_weights(self.run_dir)["tasks"].items()}
        self.device = torch.device(device)
        from ..models.precision import resolve_precision

        self.precision = resolve_precision(self.cfg.compute.precision if precision is None else precision, self.device)
        self.batch_size = batch_size
        adapter_type = self.cfg.adapter.type
        mixable = ADAPTER_TYPES[adapter_type].mixed_batch
        self.mixed = mixable if mixed_batches is None else mixed_batches
        if self.mixed and not mixable:
            raise ConfigError(f"mixed adapter batches need a LoRA-family adapter, this run uses {adapter_type!r}")
        model = build_classifier(self.cfg.model, self.specs, quantize=needs_quantized_base(self.cfg.adapter),
                                 quant_type=self.cfg.adapter.quant_type, seed=self.cfg.seed, device=self.device)
        heads = heads_path(self.run_dir)
        if heads is not None:
            load_heads(model, heads)
        self.model = model
        self.adapters = list(dict.fromkeys(self.members.job_ids + ([self.members.reference] if self.members.boosting_steps else [])))
        self.peft_model = self._load_adapters(model, self.adapters)
        trained = len(self.members.job_ids)
        log.info("ensemble predictor: %d adapters loaded from %s%s (%s)", trained, self.run_dir,
                 " (+ the untrained θ* reference the boosting learners are measured from)" if len(self.adapters) > trained else "",
                 "mixed-adapter batches" if self.mixed else "one pass per adapter")
        place_model(self.peft_model, self.device)  # heads and adapters next to the (possibly 4-bit) backbone
        self.peft_model.eval()

    def _load_adapters(self, model, ids: Sequence[str]):
        from peft import PeftModel

        from ..adapters import prepare_to_load, read_adapter_meta

        for i in ids:
            if not (RunLayout(self.run_dir).adapter(i) / "adapter_model.safetensors").is_file():
                raise ModelError(f"{RunLayout(self.run_dir).adapter(i)}: adapter_model.safetensors not found "
                                 "(only safetensors weights are loaded)")
            meta = read_adapter_meta(RunLayout(self.run_dir).adapter(i))
            prepare_to_load(meta["adapter"]["type"])
            want = [t["name"] for t in meta.get("tasks", [])]
            if want and want != [s.name for s in self.specs]:
                raise ConfigError(f"{RunLayout(self.run_dir).adapter(i)}: adapter was trained for tasks {want}, the run has {[s.name for s in self.specs]}")
        peft_model = PeftModel.from_pretrained(model, str(RunLayout(self.run_dir).adapter(ids[0])), adapter_name=ids[0])
        for i in ids[1:]:
            peft_model.load_adapter(str(RunLayout(self.run_dir).adapter(i)), adapter_name=i)
        return peft_model

    def adapter_coefficients(self, task: str) -> dict[str, float]:
        """Each adapter's coefficient in the task's logits (the formula above, expanded)."""
        self._check_task(task)
        coef: dict[str, float] = defaultdict(float)
        for a, g in zip(self.weights[task], self.members.groups):
            if a == 0:
                continue
            coef[g.base] += a
            for lr in g.learners:
                coef[lr.job_id] += a * lr.coef
                coef[self.members.reference] -= a * lr.coef
        return {k: v for k, v in coef.items() if v != 0.0}

    @torch.no_grad()
    def adapter_logits(self, task: str, texts: Sequence[str], text_pairs: Sequence[str | None] | None,
                       adapters: Sequence[str]) -> dict[str, np.ndarray]:
        """{adapter id: [N, C] logits} of each listed adapter on the inputs."""
        from ..models.precision import autocast

        n_labels = len(self.tasks[task].labels)
        out: dict[str, list[np.ndarray]] = {a: [] for a in adapters}
        pairs = list(text_pairs) if text_pairs is not None else [None] * len(texts)
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            chunk_pairs = pairs[start : start + self.batch_size]
            if self.mixed:
                k = len(adapters)
                enc = self.model.tokenize([task] * len(chunk) * k, chunk * k, chunk_pairs * k)
                enc = {key: v.to(self.device) for key, v in enc.items()}
                names = [a for a in adapters for _ in chunk]
                with autocast(self.precision, self.device):
                    logits = self.peft_model(**enc, adapter_names=names).float().cpu().numpy()[:, :n_labels]
                for i, a in enumerate(adapters):
                    out[a].append(logits[i * len(chunk) : (i + 1) * len(chunk)])
            else:
                enc = self.model.tokenize([task] * len(chunk), chunk, chunk_pairs)
                enc = {key: v.to(self.device) for key, v in enc.items()}
                for a in adapters:
                    self.peft_model.set_adapter(a)
                    with autocast(self.precision, self.device):
                        out[a].append(self.peft_model(**enc).float().cpu().numpy()[:, :n_labels])
        return {a: np.concatenate(v) if v else np.zeros((0, n_labels)) for a, v in out.items()}

    def labels(self, task: str) -> list[str]:
        """The task's labels, in the column order of :meth:`predict_proba` and :meth:`predict_logits`."""
        self._check_task(task)
        return list(self.tasks[task].labels)

    def _check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise KeyError(f"unknown task {task!r}; this ensemble knows {sorted(self.tasks)}")

    def predict_logits(self, task: str, texts: str | Sequence[str],
                       text_pairs: str | Sequence[str | None] | None = None) -> np.ndarray:
        """[N, C] ensemble logits; columns follow :meth:`labels`. A bare string is one input."""
        texts, text_pairs = _as_batch(texts, text_pairs)
        coef = self.adapter_coefficients(task)
        per_adapter = self.adapter_logits(task, texts, text_pairs, list(coef))
        n_labels = len(self.tasks[task].labels)
        z = np.zeros((len(texts), n_labels))
        for a, c in coef.items():
            z += c * per_adapter[a]
        return z

    def predict_proba(self, task: str, texts: str | Sequence[str],
                      text_pairs: str | Sequence[str | None] | None = None) -> np.ndarray:
        """[N, C] probabilities; columns follow :meth:`labels` (``predict_with_probabilities`` names them)."""
        z = self.predict_logits(task, texts, text_pairs)
        z = z - z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def predict(self, task: str, texts: str | Sequence[str], text_pairs: str | Sequence[str | None] | None = None) -> list[str]:
        """One label per input (a bare string is one input)."""
        labels = self.labels(task)
        return [labels[i] for i in self.predict_logits(task, texts, text_pairs).argmax(1)]

    def predict_with_probabilities(self, task: str, texts: str | Sequence[str],
                                   text_pairs: str | Sequence[str | None] | None = None) -> list[dict]:
        """Per input: ``{"label": ..., "probabilities": {label: p}}``."""
        labels = self.labels(task)
        return [{"label": labels[int(p.argmax())], "probabilities": {lab: float(x) for lab, x in zip(labels, p)}}
                for p in self.predict_proba(task, texts, text_pairs)]


def _as_batch(texts: str | Sequence[str], text_pairs: str | Sequence[str | None] | None) -> tuple[list[str], list | None]:
    """A bare string is one input, not a sequence of characters."""
    if isinstance(texts, str):
        texts = [texts]
        if isinstance(text_pairs, str):
            text_pairs = [text_pairs]
    elif isinstance(text_pairs, str):
        raise TypeError("text_pairs is one string but texts has several inputs; give one pair per text")
    texts = list(texts)
    if text_pairs is not None:
        text_pairs = list(text_pairs)
        if len(text_pairs) != len(texts):
            raise ValueError(f"{len(text_pairs)} text pairs for {len(texts)} texts")
    return texts, text_pairs
