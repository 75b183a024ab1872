"""The federated learner: a causal LM + one PEFT adapter predicting the next tokens of a window.

``NextTokenLM(input_ids)`` returns the vocabulary logits of each (fixed-length, unpadded) window:
at every position (``federated.targets: all``, the default — position t predicts token t + 1, the
last one the token after the window) or at the last position only (``last``). Targets follow the
same shape (:func:`window_targets`), and every loss here is a window's mean over its targets.
Adapters are exchanged as plain ``{name: tensor}`` dicts of the trainable parameters, which is what
FedAvg averages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..adapters.api import attach_adapter, needs_quantized_base
from ..config import RunConfig
from ..errors import ModelError
from ..featurize.gradients import PerSampleGradients, gold_log_odds
from ..featurize.projection import JLProjector
from ..featurize.worker import gradient_layers_for, projection_seed
from ..models.build import compute_dtype_for, disable_cpu_weight_packing, quantization_config
from ..models.precision import attention_scores, autocast, resolve_model_dtype, resolve_precision
from ..models.placement import place_model
from ..models.registry import detect_kind, load_hf_config, resolve_model_dir


class NextTokenLM(nn.Module):
    kind = "decoder"

    def __init__(self, lm: nn.Module, all_positions: bool = True) -> None:
        super().__init__()
        self.lm = lm
        self.all_positions = all_positions

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T, V] logits at every position, or [B, V] at the last one."""
        if self.all_positions:
            return self.lm(input_ids=input_ids).logits.float()
        out = self.lm(input_ids=input_ids, logits_to_keep=1)
        return out.logits[:, -1, :].float()


def window_targets(inputs: np.ndarray, target: np.ndarray, all_positions: bool) -> np.ndarray:
    """The tokens a window predicts: [N, T] (its own tokens 2..T, then the token after it) or [N]."""
    target = np.asarray(target, np.int64)
    if not all_positions:
        return target
    return np.concatenate([np.asarray(inputs, np.int64)[:, 1:], target[:, None]], axis=1)


def _flat(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)


def window_gold_log_odds(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[N] per-window mean over its targets of the gold token's log-odds."""
    z, y = _flat(logits, targets)
    return gold_log_odds(z, y).view(targets.shape[0], -1).mean(1)


def build_lm(cfg: RunConfig, device: str | torch.device = "cpu"):
    """(peft_model, tokenizer): the decoder from ``model.name_or_path`` with a fresh seeded adapter,
    every module on ``device`` (a 4-bit base is loaded there directly)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    path = resolve_model_dir(cfg.model)
    hf_cfg = load_hf_config(path, cfg.model.trust_remote_code)
    if detect_kind(hf_cfg, cfg.model.kind) != "decoder":
        raise ModelError(f"federated next-token training needs a causal LM; {path} is an encoder")
    quantize = needs_quantized_base(cfg.adapter)
    target = torch.device(device)
    kwargs = dict(local_files_only=True, trust_remote_code=cfg.model.trust_remote_code,
                  dtype=resolve_model_dtype(cfg.model.dtype, target))
    if quantize:
        kwargs["quantization_config"] = quantization_config("decoder", cfg.adapter.quant_type, compute_dtype_for(target))
        if target.type != "cpu" or torch.cuda.is_available():  # explicit (else bitsandbytes takes the current GPU)
            kwargs["device_map"] = {"": str(target) if target.index is not None else f"{target.type}:0"}
    elif target.type == "cuda":  # loaded onto the GPU directly, in its dtype
        kwargs["device_map"] = {"": str(target) if target.index is not None else "cuda:0"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=cfg.model.trust_remote_code)
        lm = AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model from {path}: {exc}") from None
    model = NextTokenLM(lm, all_positions=cfg.federated.targets == "all")
    for p in model.parameters():
        p.requires_grad_(False)
    if quantize:
        disable_cpu_weight_packing(model)
    peft_model = attach_adapter(model, cfg.adapter, seed=cfg.seed, train_heads=False)  # type: ignore[arg-type]
    place_model(peft_model, target)
    peft_model.eval()
    return peft_model, tokenizer


def model_device(peft_model: nn.Module) -> torch.device:
    """Where the model's (adapter) parameters live: inputs go there, results come back to the CPU."""
    return next(p.device for p in peft_model.parameters())


def trainable_names(peft_model: nn.Module) -> list[str]:
    return [n for n, p in peft_model.named_parameters() if ("lora_" in n or "bottleneck_" in n)]


def get_state(peft_model: nn.Module) -> dict[str, np.ndarray]:
    params = dict(peft_model.named_parameters())
    return {n: params[n].detach().cpu().float().numpy().copy() for n in trainable_names(peft_model)}


def set_state(peft_model: nn.Module, state: dict[str, np.ndarray]) -> None:
    params = dict(peft_model.named_parameters())
    missing = set(trainable_names(peft_model)) - set(state)
    if missing:
        raise ModelError(f"adapter state lacks {len(missing)} tensors (e.g. {sorted(missing)[0]})")
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(torch.tensor(np.asarray(v)).to(params[n].device, params[n].dtype))


def _set_trainable(peft_model: nn.Module) -> list[nn.Parameter]:
    names = set(trainable_names(peft_model))
    out = []
    for n, p in peft_model.named_parameters():
        p.requires_grad_(n in names)
        if n in names:
            out.append(p)
    return out


def train_windows(
    peft_model: nn.Module, inputs: np.ndarray, targets: np.ndarray, *, epochs: float, lr: float, batch_size: int, seed: int,
    precision: str = "fp32",
) -> dict:
    """AdamW on next-token cross-entropy over the windows' targets; returns mean loss and counts.
    ``precision`` (:func:`~elora_ray.models.precision.resolve_precision`): ``bf16`` runs each forward
    under bf16 autocast, as the main pipeline's training does; the loss and the backward stay fp32."""
    params = _set_trainable(peft_model)
    n = len(targets)
    if n == 0:
        raise ValueError("no training windows")
    steps = max(1, math.ceil(epochs * n / batch_size))
    rng = np.random.default_rng(seed)
    order: list[int] = []
    opt = torch.optim.AdamW(params, lr=lr)
    dev = model_device(peft_model)
    x = torch.as_tensor(inputs, dtype=torch.long).to(dev)
    y = torch.as_tensor(targets, dtype=torch.long).to(dev)
    losses = []
    peft_model.train()
    for _ in range(steps):
        while len(order) < batch_size:
            order.extend(rng.permutation(n).tolist())
        idx, order = order[:batch_size], order[batch_size:]
        batch = {"input_ids": x[idx]}
        with autocast(precision, dev, attention_scores(batch), peft_model):  # forward only (fp32 logits)
            logits = peft_model(**batch)
        loss = nn.functional.cross_entropy(*_flat(logits, y[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    peft_model.eval()
    return {"loss": float(np.mean(losses)), "steps": steps, "windows": steps * batch_size}


@torch.no_grad()
def window_logits(peft_model: nn.Module, inputs: np.ndarray, batch_size: int = 64, precision: str = "fp32") -> torch.Tensor:
    """float32 logits of the windows' targets: [N, T, vocab] (every position) or [N, vocab], on the
    model's device; ``precision`` as in :func:`train_windows`."""
    peft_model.eval()
    dev = model_device(peft_model)
    x = torch.as_tensor(inputs, dtype=torch.long).to(dev)
    with autocast(precision, dev):
        outs = [peft_model(input_ids=x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.zeros(0, 0)


def token_losses(logits: torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """Per-window mean cross-entropy over its targets (nats)."""
    if len(targets) == 0:
        return np.zeros(0)
    y = torch.as_tensor(targets, dtype=torch.long).to(logits.device)
    ce = nn.functional.cross_entropy(*_flat(logits, y), reduction="none")
    return ce.view(len(y), -1).mean(1).cpu().numpy()


class WindowFeaturizer:
    """Projected per-window gradients of the targets' mean log-odds at the current adapter (θ*); the
    forward runs in ``compute.precision`` (resolved on the model's device), the gradients come back fp32."""

    def __init__(self, cfg: RunConfig, peft_model: nn.Module) -> None:
        if cfg.featurize.gradient == "full_rank":  # ``auto`` means adapter features here
            raise ValueError("the federated stage moves the adapter by P w, so it needs featurize.gradient=adapter "
                             "or auto (got full_rank)")
        self.peft_model = peft_model
        self.layers = gradient_layers_for(peft_model)
        self.p = sum(g.size for g in self.layers)
        f = cfg.featurize
        self.device = model_device(peft_model)
        self.precision = resolve_precision(cfg.compute.precision, self.device)
        self.projector = JLProjector(self.p, f.dim, projection_seed(cfg), f.projection, f.block_rows, f.cache_limit_mb,
                                     self.device)

    def __call__(self, inputs: np.ndarray, targets: np.ndarray, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """(g̃ [N, d], h0 [N]) for the windows."""
        gs, hs = [], []
        x = torch.as_tensor(inputs, dtype=torch.long).to(self.device)
        y = torch.as_tensor(targets, dtype=torch.long).to(self.device)
        for i in range(0, len(x), batch_size):
            with PerSampleGradients(self.layers) as psg:
                batch = {"input_ids": x[i : i + batch_size]}
                with autocast(self.precision, self.device, attention_scores(batch), self.peft_model):
                    logits = self.peft_model(**batch)
                h = window_gold_log_odds(logits, y[i : i + batch_size])
                grads = psg.backward(h)
            self.peft_model.zero_grad(set_to_none=True)
            gs.append(self.projector.project(grads).cpu().numpy())
            hs.append(h.detach().cpu().numpy())
        return np.concatenate(gs), np.concatenate(hs)


def apply_projected_step(featurizer: WindowFeaturizer, w: np.ndarray) -> None:
    """Move the differentiated (output-side) adapter layers by P w (a linearised boosting learner)."""
    delta = featurizer.projector.back_project(torch.from_numpy(np.asarray(w, np.float32)))
    offset = 0
    with torch.no_grad():
        for g in featurizer.layers:
            for p in (g.module.weight, g.module.bias):
                if p is None:
                    continue
                p.add_(delta[offset : offset + p.numel()].view_as(p).to(p.device, p.dtype))
                offset += p.numel()


def fedavg(states: Sequence[dict[str, np.ndarray]], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Weighted average of adapter states (weights: the clients' training windows)."""
    if not states:
        raise ValueError("FedAvg needs at least one client state")
    w = np.asarray(weights, np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("FedAvg weights must be non-negative with a positive sum")
    w = w / w.sum()
    return {k: sum(wi * s[k].astype(np.float64) for wi, s in zip(w, states)).astype(np.float32) for k in states[0]}
