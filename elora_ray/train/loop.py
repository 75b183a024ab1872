"""A plain, seeded adapter training loop over mixed-task examples, and evaluation.

Samples are ``(task_name, Example)`` pairs; batches mix tasks (per-task heads or
verbalizers handle it). Only parameters with ``requires_grad`` train.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..featurize.gradients import gold_log_odds
from ..tasks.schema import Example, TaskData


@dataclass
class TrainStats:
    steps: int = 0
    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    flops: float = 0.0
    losses: list[float] = field(default_factory=list)


def _batch(model, tasks: dict[str, TaskData], rows: Sequence[tuple[str, Example]], device):
    enc = model.tokenize([n for n, _ in rows], [e.text for _, e in rows], [e.text_pair for _, e in rows])
    labels = torch.tensor([tasks[n].label_id(e.label) for n, e in rows])
    return {k: v.to(device) for k, v in enc.items()}, labels.to(device)


def fit_adapter(
    peft_model,
    model,
    tasks: dict[str, TaskData],
    rows: Sequence[tuple[str, Example]],
    *,
    epochs: float = 1.0,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    device: str | torch.device = "cpu",
    count_flops: bool = True,
) -> TrainStats:
    """AdamW on the trainable parameters, cross-entropy, shuffled mixed-task batches."""
    params = [p for p in peft_model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    total_steps = max(1, math.ceil(epochs * len(rows) / batch_size))
    order: list[int] = []
    stats = TrainStats()
    flops_per_token: float | None = None
    peft_model.train()
    t0 = time.perf_counter()
    for step in range(total_steps):
        if len(order) < batch_size:
            order.extend(rng.permutation(len(rows)).tolist())
        idx, order = order[:batch_size], order[batch_size:]
        enc, labels = _batch(model, tasks, [rows[i] for i in idx], device)
        padded = enc["input_ids"].numel()
        if count_flops and flops_per_token is None:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                loss = _step(peft_model, opt, enc, labels)
            flops_per_token = counter.get_total_flops() / max(1, padded)
        else:
            loss = _step(peft_model, opt, enc, labels)
        stats.losses.append(loss)
        stats.steps += 1
        stats.samples += len(idx)
        stats.tokens += int(enc["attention_mask"].sum())
        stats.flops += (flops_per_token or 0.0) * padded
    stats.seconds = time.perf_counter() - t0
    peft_model.eval()
    return stats


def _step(peft_model, opt, enc, labels) -> float:
    logits = peft_model(**enc)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate_examples(
    peft_model, model, tasks: dict[str, TaskData], rows: Sequence[tuple[str, Example]], batch_size: int = 64, device="cpu"
) -> dict[str, np.ndarray]:
    """Per-sample gold log-odds h (so loss = softplus(−h)) and argmax correctness."""
    peft_model.eval()
    hs, correct = [], []
    for start in range(0, len(rows), batch_size):
        enc, labels = _batch(model, tasks, rows[start : start + batch_size], device)
        logits = peft_model(**enc)
        hs.append(gold_log_odds(logits, labels).cpu().numpy())
        correct.append((logits.argmax(-1) == labels).cpu().numpy())
    return {"h": np.concatenate(hs) if hs else np.zeros(0), "correct": np.concatenate(correct) if correct else np.zeros(0, bool)}
