"""The Ray Train training function: one adapter job, on each worker.

``train_loop_per_worker(config)`` runs unchanged in Ray Train local mode (``num_workers=0``,
in the calling process), on one worker, or on N DDP workers (gloo on CPU, NCCL on GPU; each
rank trains on its slice of every global batch). It reports validation metrics with
``ray.train.report`` at every check and a checkpoint whenever the group's validation metric
improves, and resumes from ``ray.train.get_checkpoint()`` after a failure or a restart.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch

from ..artifacts import read_prepared
from ..config import RunConfig
from ..io import atomic_path
from ..models.classifier import TaskSpec
from .jobs import AdapterJob
from .loop import LoopState, train_adapter
from .predict import classification_metrics, predict_logits, predict_sharded

VALIDATION_BATCH = 64
"""Samples per forward of the validation checks (the resource plan counts it: elora_ray.plan.memory)."""

log = logging.getLogger(__name__)


class PeakMemory:
    """Samples this process's RSS (and CUDA peak) in a background thread."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.peak_rss = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    def __enter__(self) -> "PeakMemory":
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    def megabytes(self) -> dict[str, float]:
        out = {"peak_rss_mb": self.peak_rss / 2**20}
        if torch.cuda.is_available():
            out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return out


def job_rows(tasks, names: list[str], split: str, caps: dict[str, int] | None = None, seed: int = 0):
    """(task, example) rows of ``names`` on ``split``; ``caps``: at most that many of a task, a seeded
    sample kept in the task's order (``AdapterJob.train_samples``)."""
    by = {t.name: t for t in tasks}
    rows = []
    for n in names:
        examples = list(by[n].splits.get(split, []))
        if caps and n in caps and caps[n] < len(examples):
            keep = np.sort(np.random.default_rng([seed, len(examples), caps[n]]).choice(len(examples), caps[n], replace=False))
            examples = [examples[i] for i in keep]
        rows += [(n, e) for e in examples]
    return rows


def boost_targets(run_dir: Path, job: AdapterJob, rows) -> np.ndarray:
    """Target log-odds for each row, joined by sample id (never by file order)."""
    table = pd.read_parquet(Path(run_dir) / job.targets)
    lookup = dict(zip(table["sample_id"].astype(str), table["target"].astype(float)))
    missing = [e.sample_id for _, e in rows if e.sample_id not in lookup]
    if missing:
        raise KeyError(f"{job.targets}: no boosting target for {len(missing)} samples (e.g. {missing[0]})")
    return np.array([lookup[e.sample_id] for _, e in rows], dtype=np.float32)


def _quiet_train_reports() -> None:
    """Ray Train logs every ``report`` call at INFO from each worker; ours are logged per job."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # pragma: no cover - internal module moved
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def ignore_frozen_for_ddp(module: torch.nn.Module) -> list[str]:
    """Tell DDP to leave the frozen base weights alone: no broadcast at wrap time, no gradient buckets.

    Every rank builds the same base model from the same files, so only the trainable adapter and
    heads need syncing. Returns the ignored names (the frozen parameters and all buffers).
    """
    from torch.nn.parallel import DistributedDataParallel

    names = [n for n, p in module.named_parameters() if not p.requires_grad] + [n for n, _ in module.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)
    return names


def train_loop_per_worker(config: dict) -> None:
    import ray.train

    _quiet_train_reports()
    cfg = RunConfig.model_validate(config["cfg"])
    job = AdapterJob.from_dict(config["job"])
    run_dir = Path(config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = max(1, int(config.get("threads", 1)))
    torch.set_num_threads(threads)
    use_gpu = bool(config.get("use_gpu"))
    if use_gpu:
        from ..models.placement import worker_device

        worker_device(True, f"Ray Train worker {rank} of adapter {config['job'].get('id')}")  # fails loudly if not visible
    if world > 1 or use_gpu:
        import ray.train.torch as rtt

        device = rtt.get_device()
    else:
        device = torch.device("cpu")

    from ..adapters import regularization_loss
    from ..models.precision import apply_tf32, resolve_precision
    from .model import build_job_model, load_training_state, restore_rng, save_training_state

    precision = resolve_precision(cfg.compute.precision, device)
    apply_tf32(cfg.compute.tf32)
    tasks = read_prepared(run_dir)
    by_name = {t.name: t for t in tasks}
    specs = [TaskSpec.of(t) for t in tasks]
    with PeakMemory() as mem:
        torch.manual_seed(job.seed)
        peft_model, model = build_job_model(cfg, job, run_dir, specs, device)
        from ..models.checkpointing import maybe_enable_checkpointing

        checkpointing = maybe_enable_checkpointing(model, cfg.train.gradient_checkpointing)
        train_rows = job_rows(tasks, job.tasks, "train", job.train_samples, job.seed)
        val_rows = job_rows(tasks, job.tasks, "validation")
        targets = val_targets = None
        if job.loss == "log_odds_mse":
            targets = boost_targets(run_dir, job, train_rows)
            val_targets = boost_targets(run_dir, job, val_rows) if val_rows else None
        forward, engine = peft_model, None
        t = cfg.train
        lr = job.lr if job.lr is not None else t.lr
        if t.strategy != "deepspeed" and world > 1:
            import ray.train.torch as rtt

            ignore_frozen_for_ddp(peft_model)
            # A mixed-task batch touches only the heads of the tasks it contains (find_unused_parameters);
            # buffers are constants of the base model (no broadcast before every forward).
            forward = rtt.prepare_model(peft_model, parallel_strategy="ddp", move_to_device=False,
                                        parallel_strategy_kwargs={"find_unused_parameters": True,
                                                                  "broadcast_buffers": False})
        jcfg_adapter = cfg.adapter if job.adapter_type is None else cfg.adapter.model_copy(update={"type": job.adapter_type})

        def regularizer():
            return regularization_loss(peft_model, jcfg_adapter)

        def validate() -> dict[str, float]:
            logits, gold = predict_sharded(
                lambda rows: predict_logits(peft_model, model, by_name, rows, batch_size=VALIDATION_BATCH, device=device), val_rows,
                (rank, world))
            m = classification_metrics(logits, gold)
            m["task_accuracy"] = m["accuracy"]
            if len(job.tasks) > 1:  # which tasks moved: the job record keeps each check's per-task figures
                names = np.array([n for n, _ in val_rows])
                m["per_task"] = {n: classification_metrics(logits[names == n], gold[names == n]) for n in job.tasks
                                 if (names == n).any()}
                # each task counts once, whatever its validation size (the average the reports show)
                m["task_accuracy"] = float(np.mean([v["accuracy"] for v in m["per_task"].values()]))
            if val_targets is not None:
                from ..featurize.gradients import gold_log_odds

                h = gold_log_odds(torch.from_numpy(logits), torch.from_numpy(gold).long()).numpy()
                m["ce_loss"], m["loss"] = m["loss"], float(np.mean((h - val_targets) ** 2))
            return m

        local_root = Path(config["local_checkpoints"]) if config.get("local_checkpoints") else None
        resume = None
        ckpt = ray.train.get_checkpoint()
        if ckpt is None and local_root is not None:
            ckpt = latest_local_checkpoint(local_root)
        if ckpt is not None:
            from .loop import load_trainable_state

            with ckpt.as_directory() as d:
                params, opt_state, loop = load_training_state(Path(d))
                restore_rng(Path(d))
            load_trainable_state(peft_model, params)
            resume = (LoopState(**{k: loop[k] for k in ("step", "best_metric", "best_step", "bad_evals")},
                                best_loss=loop.get("best_loss")), opt_state)
            log.info("adapter %s: resuming from its checkpoint at step %d", job.id, resume[0].step)
        resumed_from_step = float(resume[0].step) if resume is not None else -1.0  # training advances the state
        if t.strategy == "deepspeed":
            from .deepspeed_engine import build_engine

            # After the checkpoint is loaded: ZeRO copies the parameters into its master partitions here.
            model.static_graph = True  # same gradient order on every rank (see EncoderClassifier)
            engine = build_engine(peft_model, t, lr, t.weight_decay, torch.device(device))

        from ..observe import MetricsReporter

        reporter = MetricsReporter(run_dir, f"train/{job.id}", cfg.report_to) if rank == 0 else None

        def on_step(step: int, total: int, loss: float) -> None:
            if reporter is not None:
                reporter.log({"train/loss": loss, "train/progress": step / total}, step)

        def on_eval(state: LoopState, metrics: dict, improved: bool, optimizer) -> None:
            report = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            report["improved"] = float(improved)
            if reporter is not None:
                reporter.log({f"validation/{k}": v for k, v in report.items() if k != "step"}, state.step)
            if improved and rank == 0:
                with staged_checkpoint(local_root, state.step, lambda d: save_training_state(d, peft_model, optimizer, vars(state))) as d:
                    ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(str(d)))
            else:
                ray.train.report(report)

        stats = train_adapter(
            peft_model, model, by_name, train_rows,
            epochs=job.epochs if job.epochs is not None else t.epochs,
            lr=lr,
            batch_size=t.batch_size, seed=job.seed, weight_decay=t.weight_decay, device=device,
            loss=job.loss, targets=targets, regularizer=regularizer,
            validate=validate if val_rows else None,
            evals_per_epoch=t.evals_per_epoch, patience=t.patience,
            schedule=t.schedule, warmup_fraction=t.warmup_fraction, validate_at_start=t.validate_at_start,
            precision=precision,
            metric="loss" if job.loss != "ce" else t.early_stopping_metric, ties=t.early_stopping_ties,
            on_eval=on_eval, resume=resume, shard=(rank, world), forward=forward, progress=on_step, engine=engine,
            micro_batch_size=None if t.micro_batch_size == "auto" else t.micro_batch_size,
        )
        if reporter is not None:
            reporter.close()
    final = {
        "final": 1.0, "steps": float(stats.steps), "samples": float(stats.samples), "tokens": float(stats.tokens),
        "train_seconds": stats.seconds, "train_flops": stats.flops * world,
        "best_step": float(stats.best_step if stats.best_step is not None else stats.steps),
        "stopped_early": float(stats.stopped_early), "world_size": float(world),
        "micro_batch_size": float(stats.micro_batch_size), "oom_backoffs": float(stats.oom_backoffs),
        "gradient_checkpointing": float(checkpointing),
        "resumed_from_step": resumed_from_step,
        "first_loss": float(np.mean(stats.losses[:5])) if stats.losses else float("nan"),
        "last_loss": float(np.mean(stats.losses[-5:])) if stats.losses else float("nan"),
        **mem.megabytes(),
    }
    if rank == 0:
        def write_final(d: Path) -> None:  # the best state (restored by train_adapter)
            save_training_state(d, peft_model, torch.optim.AdamW([torch.zeros(1)]), {"step": stats.steps, "final": True})
            (d / "evals.json").write_text(json.dumps(stats.evals, default=float))

        with staged_checkpoint(local_root, "final", write_final) as d:
            ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(str(d)))
    else:
        ray.train.report(final)


@contextmanager
def staged_checkpoint(local_root: Path | None, step, write: Callable[[Path], None]) -> Iterator[Path]:
    """A complete checkpoint directory (filled by ``write``) to hand to ``ray.train.report``.

    Distributed runs: a temporary directory (Ray Train copies it into ``storage_path``).
    Local mode keeps checkpoints only in memory, so we persist them ourselves under
    ``local_root`` (complete directories only: written to a temporary name, then renamed),
    keeping the newest two.
    """
    if local_root is None:
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp))
            yield Path(tmp)
        return
    name = f"checkpoint_{step:06d}" if isinstance(step, int) else f"checkpoint_{step}"
    target = local_root / name
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        write(tmp)
    steps = sorted(p for p in local_root.glob("checkpoint_[0-9]*") if p.is_dir())
    for old in steps[:-2]:
        shutil.rmtree(old, ignore_errors=True)
    yield target


def latest_local_checkpoint(local_root: Path):
    """The newest complete step checkpoint under ``local_root`` (a resumed local-mode run)."""
    import ray.train

    steps = sorted(p for p in local_root.glob("checkpoint_[0-9]*") if (p / "state.json").is_file())
    return ray.train.Checkpoint.from_directory(str(steps[-1])) if steps else None
