"""Predictions of an adapter: logits over mixed-task rows (optionally sharded across DDP ranks),
per-sample log-odds and correctness, classification metrics."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..featurize.gradients import gold_log_odds
from ..tasks.schema import Example, TaskData
from .loop import _batch


@torch.no_grad()
def predict_logits(
    peft_model, model, tasks: dict[str, TaskData], rows: Sequence[tuple[str, Example]], batch_size: int = 64, device="cpu",
    precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, max_labels] with −inf beyond a task's labels, gold label ids [N]), in ``rows`` order.
    ``precision``: ``bf16`` runs the forwards under bf16 autocast (the logits come back fp32).

    Batches hold rows of similar text length (each batch is padded to its longest): the same logits up to
    float rounding as batches in ``rows`` order, with a fraction of the padding."""
    from ..models.precision import autocast

    peft_model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][1].text) + len(rows[i][1].text_pair or ""))
    out, gold = [], []
    for start in range(0, len(rows), batch_size):
        enc, labels = _batch(model, tasks, [rows[i] for i in order[start : start + batch_size]], device)
        with autocast(precision, device):
            logits = peft_model(**enc)
        out.append(logits.float().cpu().numpy())
        gold.append(labels.cpu().numpy())
    width = model.max_labels
    if not out:
        return np.zeros((0, width), np.float32), np.zeros(0, np.int64)
    inverse = np.empty(len(rows), np.int64)
    inverse[np.asarray(order, np.int64)] = np.arange(len(rows))
    return np.concatenate(out)[inverse], np.concatenate(gold)[inverse]


def evaluate_examples(
    peft_model, model, tasks: dict[str, TaskData], rows: Sequence[tuple[str, Example]], batch_size: int = 64, device="cpu",
    precision: str = "fp32",
) -> dict[str, np.ndarray]:
    """Per-sample gold log-odds h (so loss = softplus(−h)) and argmax correctness."""
    logits, gold = predict_logits(peft_model, model, tasks, rows, batch_size, device, precision)
    t = torch.from_numpy(logits)
    g = torch.from_numpy(gold).long()
    return {
        "h": gold_log_odds(t, g).numpy() if len(gold) else np.zeros(0, np.float32),
        "correct": (t.argmax(-1) == g).numpy() if len(gold) else np.zeros(0, bool),
    }


def classification_metrics(logits: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Mean cross-entropy and accuracy of logits (−inf on a task's invalid columns)."""
    t = torch.from_numpy(np.asarray(logits, np.float32))
    g = torch.from_numpy(np.asarray(gold)).long()
    if len(g) == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    return {
        "loss": float(torch.nn.functional.cross_entropy(t, g)),
        "accuracy": float((t.argmax(-1) == g).float().mean()),
    }


def predict_sharded(predict: Callable[[Sequence], tuple[np.ndarray, np.ndarray]], rows: Sequence,
                    shard: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``predict(rows)`` of a distributed run, each rank computing its own shard (``rows[rank::world]``)
    and every rank receiving all of it, in ``rows`` order (an all-gather). Without a process group,
    or with one rank, it is ``predict(rows)``. Validation costs each DDP rank 1/world of the set."""
    import torch.distributed as dist

    rank, world = shard
    if world <= 1 or not dist.is_available() or not dist.is_initialized():
        return predict(rows)
    idx = list(range(rank, len(rows), world))
    logits, gold = predict([rows[i] for i in idx])
    parts: list = [None] * world
    dist.all_gather_object(parts, (idx, np.asarray(logits), np.asarray(gold)))
    width = max(p[1].shape[1] for p in parts if p[1].ndim == 2)
    out = np.zeros((len(rows), width), np.float32)
    labels = np.zeros(len(rows), np.int64)
    for ix, lg, gd in parts:
        if len(ix):
            out[ix], labels[ix] = lg, gd
    return out, labels
