"""A plain, seeded adapter training loop over mixed-task examples, and evaluation.

Samples are ``(task_name, Example)`` pairs; batches mix tasks (per-task heads or
verbalizers handle it). Only parameters with ``requires_grad`` train.

Two losses: ``ce`` (cross-entropy on the task's labels) and ``log_odds_mse`` (squared error
between the gold-class log-odds and a per-sample target — the boosting learner). Optional
periodic validation drives early stopping: the best state is kept and restored at the end.
Under DDP each rank trains on its own shard of every batch order (``shard=(rank, world)``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from ..featurize.gradients import gold_log_odds
from ..models.memory import free_cached_memory, is_out_of_memory
from ..tasks.schema import Example, TaskData


@dataclass
class TrainStats:
    steps: int = 0
    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    flops: float = 0.0
    losses: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    best_step: int | None = None
    best_metric: float | None = None
    stopped_early: bool = False
    micro_batch_size: int = 0
    """Samples per forward/backward that ran (after any out-of-memory back-off)."""
    oom_backoffs: int = 0


@dataclass
class LoopState:
    """What a checkpoint must hold to continue a run: counters and optimiser state."""

    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    best_loss: float | None = None
    """Validation loss at the best check (the tie-break of an accuracy metric)."""


def _batch(model, tasks: dict[str, TaskData], rows: Sequence[tuple[str, Example]], device):
    enc = model.tokenize([n for n, _ in rows], [e.text for _, e in rows], [e.text_pair for _, e in rows])
    labels = torch.tensor([tasks[n].label_id(e.label) for n, e in rows])
    return {k: v.to(device) for k, v in enc.items()}, labels.to(device)


def batch_orders(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Index lists of ``steps`` batches: seeded permutations of ``range(n)``, concatenated."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    out = []
    for _ in range(steps):
        while len(order) < batch_size:
            order.extend(rng.permutation(n).tolist())
        out.append(order[:batch_size])
        order = order[batch_size:]
    return out


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the parameters that train (adapter, and heads when they train)."""
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(module.named_parameters())
    with torch.no_grad():
        for n, v in state.items():
            if n not in params:
                raise KeyError(f"checkpoint parameter {n} is not in the model")
            params[n].copy_(v.to(params[n].device, params[n].dtype))


def train_adapter(
    peft_model,
    model,
    tasks: dict[str, TaskData],
    rows: Sequence[tuple[str, Example]],
    *,
    epochs: float = 1.0,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    weight_decay: float = 0.0,
    device: str | torch.device = "cpu",
    loss: Literal["ce", "log_odds_mse"] = "ce",
    targets: np.ndarray | None = None,
    regularizer: Callable[[], torch.Tensor | None] | None = None,
    validate: Callable[[], dict[str, float]] | None = None,
    evals_per_epoch: int = 1,
    patience: int = 0,
    metric: Literal["loss", "accuracy", "task_accuracy"] = "loss",
    ties: Literal["earliest", "loss"] = "earliest",
    schedule: Literal["constant", "linear"] = "constant",
    warmup_fraction: float = 0.0,
    validate_at_start: bool = False,
    precision: str = "fp32",
    on_eval: Callable[[LoopState, dict, bool, Any], None] | None = None,
    resume: tuple[LoopState, dict] | None = None,
    shard: tuple[int, int] = (0, 1),
    forward: torch.nn.Module | None = None,
    count_flops: bool = True,
    progress: Callable[[int, int, float], None] | None = None,
    engine: Any = None,
    micro_batch_size: int | None = None,
) -> TrainStats:
    """AdamW on the trainable parameters over shuffled mixed-task batches.

    ``validate()`` returns metrics with ``loss`` and ``accuracy``; it runs ``evals_per_epoch``
    times per epoch and at the end. ``on_eval(state, metrics, improved, optimizer)`` is called
    after each check (checkpoint there). ``resume=(state, optimizer_state)`` continues a run.
    ``forward`` is the module to call (e.g. the DDP wrapper); default ``peft_model``.
    ``engine`` is a DeepSpeed engine wrapping ``peft_model``: it runs the forward, backward and
    optimizer step (its optimizer, ZeRO-sharded), and ``on_eval`` receives ``None`` as optimizer.
    ``schedule``/``warmup_fraction``: the learning rate rises linearly over the first
    ``warmup_fraction`` of the steps, then stays (``constant``) or falls linearly to 0 (``linear``);
    it is a function of the step alone, so a resumed run continues on the same curve.
    ``precision``: ``bf16`` runs each training forward under bf16 autocast (loss, backward and the
    optimizer stay fp32); validation is always fp32.
    ``validate_at_start``: check (and checkpoint) the starting point before the first step, so the
    result is never worse on validation than the model it started from.
    ``ties``: when a check equals the best ``metric`` (an accuracy: 50 validation samples give steps of 2%),
    ``earliest`` keeps the earlier check; ``loss`` counts the check as an improvement when its validation loss
    is lower (it is kept, and patience restarts).
    ``micro_batch_size``: samples per forward/backward (default: the whole batch); gradients
    accumulate over a batch's micro-batches, each weighted by its share of the batch, so the result
    does not depend on it. A micro-batch that runs out of memory is halved and the step redone
    (``stats.micro_batch_size`` is the size that ran). A DeepSpeed engine always takes whole batches.
    """
    if loss == "log_odds_mse" and (targets is None or len(targets) != len(rows)):
        raise ValueError("loss 'log_odds_mse' needs one target per row")
    fwd = engine if engine is not None else forward if forward is not None else peft_model
    params = [p for p in fwd.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    if not rows:
        raise ValueError("no training rows")
    opt = _EngineStep(engine) if engine is not None else torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    rank, world = shard
    global_batch = batch_size * world
    total_steps = max(1, math.ceil(epochs * len(rows) / global_batch))
    orders = batch_orders(len(rows), global_batch, total_steps, seed)
    steps_per_epoch = max(1, math.ceil(len(rows) / global_batch))
    eval_every = max(1, steps_per_epoch // evals_per_epoch)
    state = LoopState()
    if resume is not None:
        state, opt_state = resume
        if opt_state and engine is None:
            opt.load_state_dict(opt_state)
    stats = TrainStats(best_step=state.best_step, best_metric=state.best_metric)
    micro = batch_size if engine is not None or not micro_batch_size else max(1, min(micro_batch_size, batch_size))
    best_params: dict[str, torch.Tensor] | None = trainable_state(peft_model) if resume is not None else None
    flops_per_token: float | None = None
    tgt = torch.as_tensor(targets, dtype=torch.float32) if targets is not None else None
    sign = 1.0 if metric == "loss" else -1.0
    peft_model.train()
    t0 = time.perf_counter()

    def check() -> bool:
        """Validate; returns True to stop."""
        nonlocal best_params
        m = from_rank0(validate() if validate is not None else {}, world)
        m["step"] = state.step
        if stats.losses:  # none yet at the start check (no NaN into the metric sinks)
            m["train_loss"] = float(np.mean(stats.losses[-eval_every:]))
        stats.evals.append(m)
        improved = False
        if validate is not None:
            value = sign * float(m[metric])
            loss_now = float(m["loss"]) if "loss" in m else None
            better = state.best_metric is None or value < state.best_metric - 1e-6
            tie_won = (not better and ties == "loss" and metric != "loss" and value <= state.best_metric + 1e-6
                       and loss_now is not None and state.best_loss is not None and loss_now < state.best_loss - 1e-6)
            if better or tie_won:
                state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
                state.best_loss = loss_now
                best_params = trainable_state(peft_model)
                improved = True
            else:
                state.bad_evals += 1
        if on_eval is not None:
            on_eval(state, m, improved, None if engine is not None else opt)
        peft_model.train()
        return validate is not None and patience > 0 and state.bad_evals >= patience

    groups = opt.param_groups if engine is None else getattr(getattr(engine, "optimizer", None), "param_groups", [])
    warmup = int(round(warmup_fraction * total_steps))

    def lr_at(step: int) -> float:
        return lr * lr_factor(step, total_steps, schedule, warmup)

    stopped = False
    if validate_at_start and resume is None and validate is not None:
        check()  # step 0: the starting point is a candidate (never stops: nothing has failed to improve yet)
    while state.step < total_steps:
        for g in groups:
            g["lr"] = lr_at(state.step)
        idx = orders[state.step][rank::world]
        while True:
            chunks = [idx[i : i + micro] for i in range(0, len(idx), micro)]
            batches = []
            for chunk in chunks:
                enc, labels = _batch(model, tasks, [rows[i] for i in chunk], device)
                batches.append((enc, labels, tgt[chunk].to(labels.device) if tgt is not None else None, len(chunk) / len(idx)))
            padded = sum(b[0]["input_ids"].numel() for b in batches)
            try:
                if count_flops and flops_per_token is None:
                    from ..models.flops import FlopCounter

                    with FlopCounter(fwd) as counter:
                        value = _step(fwd, opt, batches, loss, regularizer, precision)
                    flops_per_token = counter.total / max(1, padded)
                else:
                    value = _step(fwd, opt, batches, loss, regularizer, precision)
                break
            except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried
                if not is_out_of_memory(exc) or micro <= 1:
                    raise
                opt.zero_grad(set_to_none=True)
                del batches
                free_cached_memory(device)
                micro = max(1, micro // 2)
                stats.oom_backoffs += 1
                import logging

                logging.getLogger(__name__).warning("out of memory at %d samples per forward/backward; retrying the "
                                                    "step with %d (train.micro_batch_size)", micro * 2, micro)
        stats.micro_batch_size = micro
        state.step += 1
        stats.losses.append(value)
        stats.steps += 1
        stats.samples += len(idx)
        stats.tokens += int(sum(int(b[0]["attention_mask"].sum()) for b in batches))
        stats.flops += (flops_per_token or 0.0) * padded
        if progress is not None:
            progress(state.step, total_steps, value)
        if (validate is not None or on_eval is not None) and (state.step % eval_every == 0 or state.step == total_steps):
            if check():
                stopped = state.step < total_steps
                break
    stats.seconds = time.perf_counter() - t0
    stats.stopped_early = stopped
    stats.best_step, stats.best_metric = state.best_step, state.best_metric
    if best_params is not None:
        load_trainable_state(peft_model, best_params)
    peft_model.eval()
    return stats


def from_rank0(metrics: dict, world: int) -> dict:
    """Rank 0's validation metrics on every rank of a distributed run.

    Every rank validates the same weights, but floating-point reductions can differ in the last
    bits; a rank that decided "improved" or "stop" differently would wait forever in the next
    collective. Early stopping and the best step are therefore always rank 0's decisions.
    """
    import torch.distributed as dist

    if world <= 1 or not dist.is_available() or not dist.is_initialized():
        return metrics
    box = [metrics]
    dist.broadcast_object_list(box, src=0)
    return dict(box[0])


def lr_factor(step: int, total_steps: int, schedule: str, warmup: int) -> float:
    """Multiplier of the base learning rate at 0-based ``step`` (the step about to be taken)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


class _EngineStep:
    """The optimizer interface ``_step`` uses, backed by a DeepSpeed engine (which owns the
    optimizer, gradient sharding and zeroing)."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def zero_grad(self, set_to_none: bool = True) -> None:  # the engine zeroes after each step
        del set_to_none

    def backward(self, total: torch.Tensor) -> None:
        self.engine.backward(total)

    def step(self) -> None:
        self.engine.step()


def _step(fwd, opt, batches, loss: str, regularizer, precision: str = "fp32") -> float:
    """One optimizer step over ``batches``: [(encoding, labels, targets, weight)], the micro-batches of
    one batch, each weighted by its share of it. Gradients accumulate; a DDP model synchronises them
    on the last micro-batch only."""
    import contextlib

    from ..models.precision import attention_scores, autocast

    opt.zero_grad(set_to_none=True)
    value_sum = 0.0
    for i, (enc, labels, targets, weight) in enumerate(batches):
        last = i == len(batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(fwd, "no_sync") else fwd.no_sync()
        with sync:
            with autocast(precision, labels.device, attention_scores(enc), fwd):  # the forward only
                logits = fwd(**enc)
            logits = logits.float()
            if loss == "ce":
                value = torch.nn.functional.cross_entropy(logits, labels)
            else:
                value = ((gold_log_odds(logits, labels) - targets) ** 2).mean()
            total = value * weight if len(batches) > 1 else value
            if last and regularizer is not None:
                extra = regularizer()
                if extra is not None:
                    total = total + extra
            if isinstance(opt, _EngineStep):
                opt.backward(total)
            else:
                total.backward()
        value_sum += float(value.detach()) * weight
    opt.step()
    return value_sum


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
    """Cross-entropy training for a fixed budget, no validation (used by ``elora fidelity``)."""
    return train_adapter(
        peft_model, model, tasks, rows, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device,
        count_flops=count_flops,
    )
