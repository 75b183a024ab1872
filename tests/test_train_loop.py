"""The adapter training loop: early stopping on the validation metric keeps the best state."""

from __future__ import annotations

import numpy as np
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


def test_early_stopping_on_accuracy_keeps_the_most_accurate_check_while_loss_rises(setup):
    """Validation loss can rise while accuracy still improves (confident mistakes cost more loss than new
    correct answers save): on an accuracy metric the kept check is the most accurate one, not the lowest loss."""
    peft_model, model, tasks, rows = setup
    checks = iter([(0.60, 0.55), (0.62, 0.60), (0.65, 0.66), (0.70, 0.64), (0.72, 0.63), (0.75, 0.62)])
    snapshots: dict[int, dict] = {}

    def validate():
        loss, acc = next(checks)
        return {"loss": loss, "accuracy": 0.0, "task_accuracy": acc}

    def on_eval(state, metrics, improved, opt):
        snapshots[state.step] = trainable_state(peft_model)

    stats = train_adapter(peft_model, model, tasks, rows, epochs=3, lr=5e-3, batch_size=8, seed=0, validate=validate,
                          evals_per_epoch=2, patience=2, metric="task_accuracy", validate_at_start=True, on_eval=on_eval)
    assert [e["task_accuracy"] for e in stats.evals] == [0.55, 0.60, 0.66, 0.64, 0.63]  # two checks past the best
    assert stats.stopped_early and stats.best_step == stats.evals[2]["step"] and stats.best_metric == -0.66
    now = trainable_state(peft_model)
    for k in now:
        torch.testing.assert_close(now[k], snapshots[stats.best_step][k])


@pytest.mark.parametrize("ties", ["earliest", "loss"])
def test_accuracy_ties_are_broken_by_validation_loss_when_asked(setup, ties):
    """The decoder benchmark's CoLA group: at its majority-label accuracy from the start, training lowers the
    validation loss (1.05 → 0.67) without changing the accuracy. ``earliest`` keeps the untrained start; ``loss``
    keeps the later check with the same accuracy and lower loss, and a tie with a higher loss is no improvement."""
    peft_model, model, tasks, rows = setup
    checks = iter([(1.05, 0.70), (0.70, 0.70), (0.67, 0.70), (0.80, 0.70), (0.90, 0.68), (0.95, 0.66), (0.99, 0.6)])
    snapshots: dict[int, dict] = {}

    def validate():
        loss, acc = next(checks)
        return {"loss": loss, "accuracy": acc, "task_accuracy": acc}

    def on_eval(state, metrics, improved, opt):
        snapshots[state.step] = trainable_state(peft_model)

    stats = train_adapter(peft_model, model, tasks, rows, epochs=3, lr=5e-3, batch_size=8, seed=0, validate=validate,
                          evals_per_epoch=2, patience=2, metric="task_accuracy", validate_at_start=True, on_eval=on_eval,
                          ties=ties)
    losses = [e["loss"] for e in stats.evals]
    if ties == "earliest":
        assert stats.best_step == 0 and losses == [1.05, 0.70, 0.67]  # two checks without a strictly better one
    else:
        assert stats.best_step == stats.evals[2]["step"] and losses == [1.05, 0.70, 0.67, 0.80, 0.90]
    now = trainable_state(peft_model)
    for k in now:
        torch.testing.assert_close(now[k], snapshots[stats.best_step][k])


def test_learning_rate_schedule_warms_up_then_decays_to_zero():
    """lr_factor against the schedule written out by hand: 10 steps, 2 of warm-up."""
    from elora_ray.train.loop import lr_factor

    assert [lr_factor(s, 10, "constant", 2) for s in range(10)] == [0.5, 1.0] + [1.0] * 8
    linear = [lr_factor(s, 10, "linear", 2) for s in range(10)]
    assert linear == pytest.approx([0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])
    assert [lr_factor(s, 4, "linear", 0) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])


_TWO_RANKS = r'''
import json, os, sys, torch, torch.distributed as dist
from elora_ray.config import load_config
from elora_ray.featurize.model_at_init import build_model_at_init
from elora_ray.models.classifier import TaskSpec
from elora_ray.tasks.load import load_tasks
from elora_ray.train.loop import train_adapter
from elora_ray.train.worker import ignore_frozen_for_ddp

def run(rank, world, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    cfg = load_config(None, ["model.name_or_path=tiny-bert", "suite.samples_per_task=40", "suite.tasks_per_group=[1,1]"])
    tasks = load_tasks(cfg)
    peft_model, model = build_model_at_init(cfg, [TaskSpec.of(t) for t in tasks], train_heads=True)
    rows = [(t.name, e) for t in tasks for e in t.splits["train"]]
    # Each rank "measures" a different validation loss: rank 0 improves once then stalls; rank 1 keeps improving.
    own = iter([1.0, 0.5, 0.6, 0.7, 0.8, 0.9] if rank == 0 else [1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    stats = train_adapter(peft_model, model, {t.name: t for t in tasks}, rows, epochs=3, lr=1e-3, batch_size=8, seed=0,
                          validate=lambda: {"loss": next(own), "accuracy": 0.5}, evals_per_epoch=2, patience=2,
                          shard=(rank, world))
    ignored = ignore_frozen_for_ddp(peft_model)
    ddp = torch.nn.parallel.DistributedDataParallel(peft_model, find_unused_parameters=True, broadcast_buffers=False)
    synced = [n for n, p in peft_model.named_parameters() if any(p is q for q in ddp._module_parameters)]
    frozen = [n for n, p in peft_model.named_parameters() if not p.requires_grad]
    json.dump({"steps": stats.steps, "best_step": stats.best_step, "stopped": stats.stopped_early,
               "losses": [e["loss"] for e in stats.evals], "synced_trainable": all(
                   p.requires_grad for n, p in peft_model.named_parameters() if n in synced),
               "synced": len(synced), "frozen": len(frozen), "ignored_frozen": set(frozen) <= set(ignored)},
              open(f"{out}/rank{rank}.json", "w"))
    dist.destroy_process_group()

if __name__ == "__main__":
    out = sys.argv[1]
    from elora_ray.config import load_config as _lc
    from elora_ray.models.registry import resolve_model_dir
    resolve_model_dir(_lc(None, ["model.name_or_path=tiny-bert"]).model)  # build the cached model once, not per rank
    torch.multiprocessing.spawn(run, args=(2, f"file://{out}/rendezvous", out), nprocs=2)
'''


def test_distributed_ranks_take_rank0s_early_stopping_decisions(tmp_path):
    """Two gloo ranks whose own validation numbers disagree stop together, at rank 0's best step; DDP
    wraps only the trainable parameters (frozen base weights ignored)."""
    import json
    import subprocess
    import sys

    script = tmp_path / "two_ranks.py"
    script.write_text(_TWO_RANKS)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["losses"] == r1["losses"] == [1.0, 0.5, 0.6, 0.7]  # rank 0's numbers everywhere
    assert r0["stopped"] and r1["stopped"] and r0["steps"] == r1["steps"] and r0["best_step"] == r1["best_step"]
    for r in (r0, r1):
        assert r["ignored_frozen"] and r["synced_trainable"] and 0 < r["synced"] and r["frozen"] > 0


def _loop_setup(micro=None, checkpointing=False):
    from elora_ray.adapters import attach_adapter
    from elora_ray.config import AdapterConfig, ModelConfig
    from elora_ray.models.build import build_classifier
    from elora_ray.models.checkpointing import maybe_enable_checkpointing
    from elora_ray.models.classifier import TaskSpec
    from elora_ray.tasks.schema import Example, TaskData

    task = TaskData("t", ["a", "b"], {"train": [Example(f"s{i}", f"word {i} " * (1 + i % 5), ["a", "b"][i % 2]) for i in range(24)]})
    model = build_classifier(ModelConfig(name_or_path="tiny-llama", max_length=32), [TaskSpec.of(task)])
    if checkpointing:
        assert maybe_enable_checkpointing(model, True)
    torch.manual_seed(0)
    peft_model = attach_adapter(model, AdapterConfig(type="lora", rank=2), seed=0)
    return peft_model, model, {"t": task}, [("t", e) for e in task.splits["train"]]


def test_micro_batches_and_checkpointing_give_the_same_adapter():
    """Gradient accumulation over micro-batches and recomputed activations change memory, not the result."""
    from elora_ray.train.loop import train_adapter, trainable_state

    results = []
    for micro, ckpt in ((None, False), (4, False), (3, True)):
        peft_model, model, tasks, rows = _loop_setup(micro, ckpt)
        stats = train_adapter(peft_model, model, tasks, rows, epochs=1, lr=1e-2, batch_size=12, seed=0,
                              micro_batch_size=micro, count_flops=False)
        assert stats.micro_batch_size == (micro or 12)
        results.append((trainable_state(peft_model), stats.losses))
    ref, ref_losses = results[0]
    for state, losses in results[1:]:  # float summation order only (AdamW magnifies it slightly: ≤ 0.1% of the weights)
        assert np.allclose(losses, ref_losses, atol=1e-5)
        for k, v in ref.items():
            assert torch.allclose(state[k], v, atol=2e-4), k


def test_out_of_memory_halves_the_micro_batch_and_records_it(caplog):
    """An injected out-of-memory error for forwards of more than 3 samples: the step is redone with
    halved micro-batches, training finishes with the same adapter, and the size that ran is recorded."""
    from elora_ray.train.loop import train_adapter, trainable_state

    peft_model, model, tasks, rows = _loop_setup()
    ref = train_adapter(peft_model, model, tasks, rows, epochs=1, lr=1e-2, batch_size=12, seed=0, count_flops=False)
    ref_state = trainable_state(peft_model)

    peft_model, model, tasks, rows = _loop_setup()
    real_forward = model.forward

    def forward(input_ids, attention_mask, task_index):
        if input_ids.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real_forward(input_ids, attention_mask, task_index)

    model.forward = forward
    stats = train_adapter(peft_model, model, tasks, rows, epochs=1, lr=1e-2, batch_size=12, seed=0, count_flops=False)
    assert stats.micro_batch_size == 3 and stats.oom_backoffs == 2  # 12 -> 6 -> 3
    assert "out of memory at 12 samples" in caplog.text
    assert np.allclose(stats.losses, ref.losses, atol=1e-5)
    for k, v in ref_state.items():
        assert torch.allclose(trainable_state(peft_model)[k], v, atol=2e-4), k
    model.forward = lambda **k: (_ for _ in ()).throw(RuntimeError("some other error"))
    with pytest.raises(RuntimeError, match="some other error"):  # only memory errors are retried
        train_adapter(peft_model, model, tasks, rows, epochs=1, lr=1e-2, batch_size=12, seed=0, count_flops=False)


def _sharded_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    import json

    import torch.distributed as dist

    from elora_ray.train.predict import predict_sharded

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    seen = []

    def predict(rows):
        seen.extend(rows)
        return np.array([[r, -r] for r in rows], np.float32).reshape(len(rows), 2), np.array([r % 2 for r in rows])

    logits, gold = predict_sharded(predict, list(range(11)), (rank, world))
    with open(f"{out_dir}/{rank}.json", "w") as f:
        json.dump({"seen": seen, "logits": logits.tolist(), "gold": gold.tolist()}, f)
    dist.destroy_process_group()


def test_ddp_ranks_validate_their_shard_and_gather(tmp_path):
    """Each of 2 ranks predicts only its half of the validation rows; both get every row, in order."""
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sharded_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert got[0]["seen"] == [0, 2, 4, 6, 8, 10] and got[1]["seen"] == [1, 3, 5, 7, 9]
    for g in got:
        assert g["logits"] == [[float(r), float(-r)] for r in range(11)] and g["gold"] == [r % 2 for r in range(11)]


def test_ties_setting_is_validated_and_only_loss_changes_the_job_fingerprints():
    """``earliest`` is how every finished job chose its check, so it leaves the fingerprints as they were
    (finished runs are not retrained); ``loss`` retrains."""
    from elora_ray.config import ConfigError
    from elora_ray.train.jobs import AdapterJob

    def cfg(*sets):
        return load_config(None, ["model.name_or_path=tiny-bert", *sets])

    with pytest.raises(ConfigError, match="early_stopping_ties"):
        cfg("train.early_stopping_ties=latest")
    job = AdapterJob(id="group-0", method="ensemble", tasks=["sent"])
    base = job.fingerprint(cfg(), "d")
    assert job.fingerprint(cfg("train.early_stopping_ties=earliest"), "d") == base
    assert job.fingerprint(cfg("train.early_stopping_ties=loss"), "d") != base
