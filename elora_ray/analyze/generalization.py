"""``elora analyze sharpness``: sharpness and generalization gap vs adapter rank and ensembles.

Reproduces the measurement of the paper's Section 4 (Figure 4a/4b) on any task of a config:

* **single adapters** of each rank r in ``analyze.sharpness.ranks``;
* **ensembles** of k adapters of rank ``total_rank / k`` each (so the total rank is fixed),
  trained independently (seeds ``seed + j``) and combined by weighted averaging of their logits,
  with weights on the simplex fitted on the validation split (the same convex program as the
  ensemble stage, :func:`elora_ray.ensemble.weights.fit_task_weights`).

For every variant we report the empirical generalization error — test loss minus training loss
of the (combined) model — and a Hessian-based sharpness measure: the trace of the Hessian of the
per-sample loss w.r.t. all adapter weights (task heads excluded), estimated with Hutchinson
probes at ``points`` seeded training samples; the paper's measure is the maximum over training
points, we also report the mean. The trace is taken in the SDPA "math" kernel, whose backward is
twice differentiable on every device.

One Ray task (1 CPU, or 1 GPU when the cluster has one) per (task, variant); each finished
variant is kept under ``analyze/sharpness/variants/`` keyed by its settings, so a killed analysis
resumes. Writes ``analyze/sharpness/results.parquet``, ``summary.json``, ``summary.md`` and
``plots/sharpness.png`` under the run directory.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..models.precision import model_fingerprint
from ..adapter_types import ADAPTER_TYPES
from ..artifacts import read_data_manifest
from ..config import RunConfig
from ..errors import ConfigError
from ..io import fingerprint, write_json, write_parquet, write_text
from ..layout import RunLayout
from ..raysession import ensure_ray
from .sharpness_report import _to_arrow, plot_sharpness, summarize, summary_markdown

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """k adapters of rank ``rank`` each (k = 1: a single adapter)."""

    k: int
    rank: int

    @property
    def name(self) -> str:
        return f"r{self.rank}" if self.k == 1 else f"{self.k}x{self.rank}"

    @property
    def total_rank(self) -> int:
        return self.k * self.rank


def variants_for(cfg: RunConfig) -> list[Variant]:
    """Singles at every rank, then ensembles at the fixed total rank (a single adapter of the
    total rank is always included, as the k = 1 point of the ensemble curve)."""
    s = cfg.analyze.sharpness
    total = s.resolved_total_rank()
    out = [Variant(1, r) for r in sorted(set(s.ranks) | {total})]
    out += [Variant(k, total // k) for k in s.ensemble_sizes if k > 1]
    return out


def _member_config(cfg: RunConfig, rank: int, seed: int) -> RunConfig:
    a = cfg.adapter
    # Keep the LoRA scaling alpha / rank of the configured adapter for every rank.
    alpha = None if a.alpha is None else a.alpha * rank / a.rank
    return cfg.model_copy(update={"adapter": a.model_copy(update={"rank": rank, "alpha": alpha}), "seed": seed})


def _settings_tag(cfg: RunConfig, task: str, variant: Variant, seed: int, data_fingerprint: str) -> str:
    s = cfg.analyze.sharpness
    payload = {
        "task": task, "k": variant.k, "rank": variant.rank, "seed": seed, "data": data_fingerprint,
        "model": model_fingerprint(cfg.model), "adapter": cfg.adapter.model_dump(mode="json"),
        "train": {"epochs": s.epochs, "lr": s.lr, "batch_size": s.batch_size, "train_heads": cfg.train.train_heads},
        "hessian": {"points": s.points, "probes": s.probes},
    }
    return fingerprint(payload)


def adapter_weights(members) -> list:
    """The adapter parameters of every member (task heads excluded): what the Hessian is taken of."""
    return [
        p for peft_model, _ in members for n, p in peft_model.named_parameters()
        if p.requires_grad and ".heads." not in f".{n}"
    ]


def ensemble_loss_fn(members, alpha, tasks: dict, rows: list, n_labels: int, device="cpu"):
    """A closure: cross-entropy of Σ_j α_j z_j(rows) (the combined logits over the task's labels).

    The forward runs in the SDPA "math" kernel: the fused CPU/flash kernels have no double backward,
    which the Hessian-vector products need."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..train.loop import _batch

    def loss_fn():
        total = None
        with sdpa_kernel(SDPBackend.MATH):
            for a, (peft_model, model) in zip(alpha, members):
                enc, label = _batch(model, tasks, rows, device)
                z = peft_model(**enc)[:, :n_labels] * float(a)
                total = z if total is None else total + z
        return F.cross_entropy(total, label)

    return loss_fn


def measure_variant(cfg_data: dict, run_dir: str, task_name: str, k: int, rank: int, seed: int) -> dict:
    """Train the variant's k adapters on ``task_name``, combine them, and measure losses and the
    Hessian trace. Runs in a Ray task (or locally)."""
    import torch
    import torch.nn.functional as F

    from ..adapters import regularization_loss
    from ..artifacts import heads_path, read_prepared
    from ..ensemble.weights import fit_task_weights
    from ..featurize.model_at_init import build_model_at_init
    from ..models.classifier import TaskSpec
    from ..train.loop import train_adapter
    from ..train.predict import predict_logits
    from ..train.model import freeze_heads
    from .sharpness import hutchinson_trace

    torch.set_num_threads(1)
    cfg = RunConfig.model_validate(cfg_data)
    s = cfg.analyze.sharpness
    run = Path(run_dir)
    tasks = read_prepared(run)
    by_name = {t.name: t for t in tasks}
    task = by_name[task_name]
    n_labels = task.num_labels
    from ..models.placement import reserved_gpu_ids, worker_device

    device = str(worker_device(bool(reserved_gpu_ids()), "a sharpness measurement task"))  # never a GPU it did not reserve
    specs = [TaskSpec.of(t) for t in tasks]
    train_rows = [(task_name, e) for e in task.splits["train"]]
    val_rows = [(task_name, e) for e in task.splits["validation"]]
    test_split = "test" if task.splits.get("test") else "validation"
    test_rows = [(task_name, e) for e in task.splits[test_split]]

    members, logits = [], {"train": [], "validation": [], "test": []}
    train_seconds, steps = 0.0, 0
    for j in range(k):
        mcfg = _member_config(cfg, rank, seed + j)
        peft_model, model = build_model_at_init(mcfg, specs, heads_path(run), device, train_heads=True)
        if not cfg.train.train_heads:
            freeze_heads(peft_model)
        stats = train_adapter(
            peft_model, model, by_name, train_rows, epochs=s.epochs, lr=s.lr, batch_size=s.batch_size,
            seed=seed + j, device=device, regularizer=lambda m=peft_model, a=mcfg.adapter: regularization_loss(m, a),
            count_flops=False,
        )
        train_seconds += stats.seconds
        steps += stats.steps
        for split, rows in (("train", train_rows), ("validation", val_rows), ("test", test_rows)):
            z, gold = predict_logits(peft_model, model, by_name, rows, device=device)
            logits[split].append((z[:, :n_labels].astype(np.float64), gold))
        members.append((peft_model, model))

    if k > 1:
        alpha = fit_task_weights([z for z, _ in logits["validation"]], logits["validation"][0][1], own=0)
    else:
        alpha = np.ones(1)

    def metrics(split: str) -> tuple[float, float]:
        z = sum(a * zj for a, (zj, _) in zip(alpha, logits[split]))
        gold = logits[split][0][1]
        t = torch.from_numpy(np.asarray(z))
        g = torch.from_numpy(gold).long()
        return float(F.cross_entropy(t, g)), float((t.argmax(-1) == g).double().mean())

    train_loss, train_acc = metrics("train")
    test_loss, test_acc = metrics("test")

    # Hessian trace of the per-sample loss of the combined model w.r.t. all adapter weights.
    params = adapter_weights(members)
    rng = np.random.default_rng(seed)
    points = rng.choice(len(train_rows), size=min(s.points, len(train_rows)), replace=False)
    traces, stderrs = [], []
    t0 = time.perf_counter()
    for pi, idx in enumerate(points):
        loss_fn = ensemble_loss_fn(members, alpha, by_name, [train_rows[int(idx)]], n_labels, device)
        est = hutchinson_trace(loss_fn, params, probes=s.probes, seed=seed * 1000 + pi)
        traces.append(est.trace)
        stderrs.append(est.stderr)
    hessian_seconds = time.perf_counter() - t0
    worst = int(np.argmax(traces))
    return {
        "task": task_name, "variant": Variant(k, rank).name, "k": k, "rank": rank, "total_rank": k * rank,
        "adapter_parameters": int(sum(p.numel() for p in params)),
        "train_loss": train_loss, "test_loss": test_loss, "gap": test_loss - train_loss,
        "train_accuracy": train_acc, "test_accuracy": test_acc, "test_split": test_split,
        "trace_max": float(traces[worst]), "trace_max_stderr": float(stderrs[worst]),
        "trace_mean": float(np.mean(traces)), "trace_mean_stderr": float(np.std(traces, ddof=1) / np.sqrt(len(traces)))
        if len(traces) > 1 else 0.0,
        "traces": [float(x) for x in traces], "weights": [float(a) for a in alpha],
        "train_samples": len(train_rows), "test_samples": len(test_rows), "steps": steps,
        "train_seconds": train_seconds, "hessian_seconds": hessian_seconds, "device": device,
    }


def run_sharpness(cfg: RunConfig, run_dir: Path, progress: bool = True) -> dict:
    """Measure every (task, variant); write results, summary and plot; return the summary."""
    from ..artifacts import read_prepared

    ranked = [t.name for t in ADAPTER_TYPES.values() if t.sized_by_rank]
    if not ADAPTER_TYPES[cfg.adapter.type].sized_by_rank:
        raise ConfigError(
            f"adapter.type: sharpness analysis varies the adapter rank; '{cfg.adapter.type}' is sized by "
            f"reduction_factor instead (use one of {', '.join(ranked)})"
        )
    s = cfg.analyze.sharpness
    tasks = read_prepared(run_dir)
    names = [t.name for t in tasks]
    chosen = s.tasks or names
    unknown = [t for t in chosen if t not in names]
    if unknown:
        raise ConfigError(f"analyze.sharpness.tasks: unknown task(s) {', '.join(unknown)}; tasks: {', '.join(names)}")
    for t in tasks:
        if t.name in chosen and (not t.splits["train"] or not t.splits["validation"]):
            raise ConfigError(f"analyze.sharpness: task '{t.name}' needs train and validation samples")
    seed = s.seed if s.seed is not None else cfg.seed
    data_fp = fingerprint(read_data_manifest(run_dir))
    out = RunLayout(run_dir).sharpness
    jobs = [(t, v) for t in chosen for v in variants_for(cfg)]

    done: dict[tuple[str, str], dict] = {}
    for t, v in jobs:
        path = out / "variants" / t / f"{v.name}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            if data.get("tag") == _settings_tag(cfg, t, v, seed, data_fp):
                done[(t, v.name)] = data
    if done:
        log.info("analyze sharpness: reusing %d measured variant(s) from %s", len(done), out / "variants")

    todo = [(t, v) for t, v in jobs if (t, v.name) not in done]
    if todo:
        ensure_ray(cfg.ray)
        import ray

        from ..train.runner import job_resources, resolve_use_gpu

        resources = job_resources(cfg.model_copy(update={"train": cfg.train.model_copy(update={"num_workers": 0})}),
                                  resolve_use_gpu(cfg))  # what one local-mode training job holds
        remote = ray.remote(max_retries=1, **resources)(measure_variant)
        cfg_data = cfg.model_dump(mode="json")
        pending = {remote.remote(cfg_data, str(run_dir), t, v.k, v.rank, seed): (t, v) for t, v in todo}
        with tqdm(total=len(jobs), initial=len(done), desc="analyze sharpness", unit="variant", disable=not progress) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for r in ready:
                    t, v = pending.pop(r)
                    data = {**ray.get(r), "tag": _settings_tag(cfg, t, v, seed, data_fp)}
                    write_json(out / "variants" / t / f"{v.name}.json", data)
                    done[(t, v.name)] = data
                    bar.update(1)

    rows = [done[(t, v.name)] for t, v in jobs]
    table = pd.DataFrame([{k: v for k, v in r.items() if k not in ("traces", "weights", "tag")} for r in rows])
    write_parquet(out / "results.parquet", _to_arrow(table))
    summary = summarize(table, cfg, seed)
    write_json(out / "summary.json", {**summary, "variants": rows})
    write_text(out / "summary.md", summary_markdown(table, summary))
    plot_sharpness(table, run_dir / "plots" / "sharpness.png", cfg)
    return summary


__all__ = ["Variant", "variants_for", "measure_variant", "run_sharpness", "summarize"]
