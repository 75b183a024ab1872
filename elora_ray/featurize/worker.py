"""The Ray Data actor: loads θ* once, then maps batches of samples to features.

``mode="pooled"``: frozen pooled encoder features (input of the linear probe).
``mode="gradients"``: h0 = gold-class log-odds at θ* and the JL-projected per-sample
gradient of h w.r.t. the adapter (or, ``featurize.gradient: full_rank``, the sketched gradient
w.r.t. LoRA's update matrix), one forward + one backward per batch.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..config import RunConfig
from ..models.classifier import TaskSpec
from .gradients import INPUT_SIDE, OUTPUT_SIDE, PerSampleGradients, gold_log_odds, gradient_layers
from .model_at_init import build_model_at_init
from .projection import JLProjector
from .update_sketch import PerSampleUpdateSketch, lora_sites

PROJECTION_SALT = 0x9E3779B9  # P's seed differs from the adapter-init seed


def projection_seed(cfg: RunConfig) -> int:
    return (cfg.seed * 1_000_003 + PROJECTION_SALT) % (2**62)


class SampleFeaturizer:
    """Callable class for ``Dataset.map_batches(..., compute=ActorPoolStrategy(...))``."""

    def __init__(self, cfg_data: dict, specs: list[dict], heads_path: str | None, mode: str, threads: int = 1) -> None:
        torch.set_num_threads(max(1, int(threads)))
        self.cfg = RunConfig.model_validate(cfg_data)
        self.mode = mode
        from ..models.placement import reserved_gpu_ids, worker_device

        from ..models.precision import apply_tf32, resolve_precision

        self.device = worker_device(bool(reserved_gpu_ids()), "a featurize actor")
        self.precision = resolve_precision(self.cfg.compute.precision, self.device)
        apply_tf32(self.cfg.compute.tf32)
        task_specs = [TaskSpec(s["name"], tuple(s["labels"]), s.get("verbalizer")) for s in specs]
        t0 = time.perf_counter()
        self.peft_model, self.model = build_model_at_init(self.cfg, task_specs, heads_path, self.device)
        self.load_s = time.perf_counter() - t0
        for name, p in self.peft_model.named_parameters():
            p.requires_grad_(False)
        self.sketch: PerSampleUpdateSketch | None = None
        if mode == "gradients":
            self.layers = gradient_layers_for(self.peft_model)
            if self.cfg.feature_gradient() == "full_rank":
                self.sketch = PerSampleUpdateSketch(lora_sites(self.peft_model), self.cfg.featurize.dim,
                                                    projection_seed(self.cfg), self.device)
            else:
                self.projector = JLProjector(
                    sum(g.size for g in self.layers), self.cfg.featurize.dim, projection_seed(self.cfg),
                    self.cfg.featurize.projection, self.cfg.featurize.block_rows, self.cfg.featurize.cache_limit_mb,
                    self.device,
                )
        self.flops_per_token: float | None = None
        self.micro_batch: int | None = None
        """Samples per forward/backward after out-of-memory back-off (None: the whole batch so far)."""
        from ..raysession import current_node_id

        self.node_id = current_node_id() or "local"

    def _tokenize(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        pairs = batch.get("text_pair")
        pair_list = [None if (p is None or (isinstance(p, float) and np.isnan(p))) else str(p) for p in pairs] if pairs is not None else None
        enc = self.model.tokenize([str(t) for t in batch["task"]], [str(t) for t in batch["text"]], pair_list)
        return {k: v.to(self.device) for k, v in enc.items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        enc = self._tokenize(batch)
        out: dict[str, Any] = {k: batch[k] for k in ("task", "split", "sample_id", "label", "label_id", "shard")}
        tokens = enc["attention_mask"].sum(1).cpu().numpy().astype(np.int32)
        out["tokens"] = tokens
        if self.mode == "pooled":
            from ..models.precision import autocast

            with torch.no_grad(), autocast(self.precision, self.device):  # the probe's inputs, as training computes them
                pooled = self.model.pooled(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
            out["pooled"] = pooled.float().cpu().numpy()
            return out
        labels = torch.tensor(np.array(batch["label_id"], dtype=np.int64), device=self.device)
        padded = int(enc["input_ids"].numel())
        if self.flops_per_token is None:
            from ..models.flops import FlopCounter

            with FlopCounter(self.peft_model) as counter:
                h, proj = self._features_backing_off(enc, labels)
            self.flops_per_token = counter.total / max(1, padded)
        else:
            h, proj = self._features_backing_off(enc, labels)
        width = enc["input_ids"].shape[1]
        out["h0"] = h.detach().float().cpu().numpy()
        out["grad"] = proj.cpu().numpy()
        out["flops"] = np.full(len(tokens), self.flops_per_token * width, dtype=np.float64)
        p = self.sketch.p if self.sketch is not None else self.projector.p
        out["grad_params"] = np.full(len(tokens), p, dtype=np.int64)
        out["node"] = np.full(len(tokens), self.node_id, dtype=object)
        out["micro_batch"] = np.full(len(tokens), self.micro_batch or len(tokens), dtype=np.int64)
        import resource

        out["peak_rss"] = np.full(len(tokens), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, dtype=np.int64)
        return out

    def _features_backing_off(self, enc: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, projected gradients) of a batch, in slices of ``self.micro_batch`` samples; a slice that runs
        out of memory halves it for this and every later batch. Per-sample gradients do not depend on
        which samples share a forward (the padding is the batch's), so the features are the same."""
        from ..models.memory import free_cached_memory, is_out_of_memory

        n = int(labels.shape[0])
        while True:
            size = min(n, self.micro_batch or n)
            try:
                hs, ps = [], []
                for i in range(0, n, size):
                    part = {k: v[i : i + size] for k, v in enc.items()}
                    h, grads = self._gradients(part, labels[i : i + size])
                    hs.append(h.detach())
                    ps.append(grads if self.sketch is not None else self.projector.project(grads))
                return torch.cat(hs), torch.cat(ps)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried
                if not is_out_of_memory(exc) or size <= 1:
                    raise
                hs = ps = []
                free_cached_memory(self.device)
                self.micro_batch = max(1, size // 2)
                import logging

                logging.getLogger(__name__).warning("featurize: out of memory at %d samples per forward/backward; "
                                                    "continuing with %d", size, self.micro_batch)

    def _gradients(self, enc: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ..models.precision import attention_scores, autocast

        capture = self.sketch if self.sketch is not None else PerSampleGradients(self.layers)
        with capture as psg:
            with autocast(self.precision, self.device, attention_scores(enc), self.peft_model):  # forward only
                logits = self.peft_model(**enc)
            h = gold_log_odds(logits.float(), labels)
            grads = psg.backward(h)  # [B, d] sketch (full_rank) or [B, p] adapter gradients
        return h, grads


def gradient_layers_for(peft_model: torch.nn.Module):
    """Hook layers for featurisation: only the layers we differentiate keep requires_grad."""
    for name, p in peft_model.named_parameters():
        p.requires_grad_(False)
    for name, m in peft_model.named_modules():
        if isinstance(m, torch.nn.Linear) and any(r in name.split(".") for r in OUTPUT_SIDE + INPUT_SIDE):
            for p in m.parameters():
                p.requires_grad_(True)
    layers = gradient_layers(peft_model)
    chosen = {id(g.module) for g in layers}
    for name, m in peft_model.named_modules():
        if isinstance(m, torch.nn.Linear) and id(m) not in chosen:
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
    return layers
