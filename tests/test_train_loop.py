"""The adapter training loop: early stopping on the validation metric keeps the best state."""

from __future__ import annotations

import pytest
import torch

from elora_ray.config import load_config
from elora_ray.featurize.model_at_init import build_model_at_init
from elora_ray.models.classifier import TaskSpec
from elora_ray.tasks.load import load_tasks
from elora_ray.train.loop import train_adapter, trainable_state


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(None, ["model.name_or_path=tiny-bert", "suite.samples_per_task=40", "suite.tasks_per_group=[1,1]"])
    tasks = load_tasks(cfg)
    peft_model, model = build_model_at_init(cfg, [TaskSpec.of(t) for t in tasks], train_heads=True)
    rows = [(t.name, e) for t in tasks for e in t.splits["train"]]
    return peft_model, model, {t.name: t for t in tasks}, rows


def test_early_stopping_restores_the_best_checked_state(setup):
    peft_model, model, tasks, rows = setup
    losses = iter([1.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99])
    snapshots: dict[int, dict] = {}

    def on_eval(state, metrics, improved, opt):
        snapshots[state.step] = trainable_state(peft_model)

    stats = train_adapter(
        peft_model, model, tasks, rows, epochs=3, lr=5e-3, batch_size=8, seed=0,
        validate=lambda: {"loss": next(losses), "accuracy": 0.5}, evals_per_epoch=2, patience=2, on_eval=on_eval,
    )
    assert stats.stopped_early and len(stats.evals) == 4  # best at check 2, then two checks without improvement
    best = stats.evals[1]["step"]
    assert stats.best_step == best and stats.steps == stats.evals[-1]["step"]
    now = trainable_state(peft_model)
    assert set(now) == set(snapshots[best])
    for k in now:
        torch.testing.assert_close(now[k], snapshots[best][k])
    assert any(not torch.equal(now[k], snapshots[stats.steps][k]) for k in now)  # it did move on after the best


def test_no_patience_trains_the_full_budget(setup):
    peft_model, model, tasks, rows = setup
    stats = train_adapter(peft_model, model, tasks, rows, epochs=1, lr=1e-3, batch_size=8, seed=0,
                          validate=lambda: {"loss": 1.0, "accuracy": 0.5}, evals_per_epoch=2, patience=0)
    assert not stats.stopped_early and stats.steps == -(-len(rows) // 8) and stats.flops > 0
    assert len(rows) <= stats.samples < len(rows) + 8  # the last batch is filled up from a new permutation


def test_validate_at_start_keeps_the_start_when_training_never_beats_it(setup):
    """With the start check, the untrained state is a candidate: when every later check is worse, the
    adapter comes back exactly as it started (and no NaN train loss is reported for the start)."""
    peft_model, model, tasks, rows = setup
    start = trainable_state(peft_model)
    losses = iter([0.5, 0.6, 0.7, 0.8])
    stats = train_adapter(peft_model, model, tasks, rows, epochs=3, lr=5e-3, batch_size=8, seed=0,
                          validate=lambda: {"loss": next(losses), "accuracy": 0.5}, evals_per_epoch=2, patience=2,
                          validate_at_start=True)
    assert stats.evals[0]["step"] == 0 and "train_loss" not in stats.evals[0]
    assert stats.best_step == 0 and stats.stopped_early and len(stats.evals) == 3
    now = trainable_state(peft_model)
    for k in now:
        torch.testing.assert_close(now[k], start[k])


def test_learning_rate_schedule_warms_up_then_decays_to_zero():
    """lr_factor against the schedule written out by hand: 10 steps, 2 of warm-up."""
    from elora_ray.train.loop import lr_factor

    assert [lr_factor(s, 10, "constant", 2) for s in range(10)] == [0.5, 1.0] + [1.0] * 8
    linear = [lr_factor(s, 10, "linear", 2) for s in range(10)]
    assert linear == pytest.approx([0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])
    assert [lr_factor(s, 4, "linear", 0) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])
