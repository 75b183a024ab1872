"""What one adapter training is (an :class:`AdapterJob`) and when it is done.

Every adapter of every method — group adapters, boosting learners, baselines — is a job with
a stable id. Its artifacts, all keyed by that id under the run directory (paths:
:class:`elora_ray.layout.RunLayout`):

- ``adapters/<id>/``          PEFT layout (safetensors) + ``elora_adapter.json`` (job, stats)
- ``outputs/<id>.parquet``    logits per (split, task, sample_id) — what later stages combine
- ``train/jobs/<id>.json``    the job record, written last: its presence with a matching
                              fingerprint means the job is done (a rerun skips it)
- ``ray_train/<id>-<fp>/``    Ray Train's run folder (checkpoints; a restarted run resumes)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from ..models.precision import model_fingerprint
from ..artifacts import read_job_record
from ..config import RunConfig
from ..io import fingerprint
from ..layout import RunLayout
from ..models.precision import fingerprint_part


@dataclass
class AdapterJob:
    id: str
    method: str
    tasks: list[str]
    """Tasks whose training samples it trains on (validation of the same tasks for early stopping)."""
    output_tasks: dict[str, list[str]] = field(default_factory=dict)
    """split → tasks to compute logits for once trained."""
    adapter_type: str | None = None
    """Override of ``adapter.type`` (the QLoRA baseline)."""
    init_from: str | None = None
    """Start from this job's adapter instead of θ* (MTL-FT's per-task fine-tuning)."""
    loss: Literal["ce", "log_odds_mse"] = "ce"
    targets: str | None = None
    """``log_odds_mse``: parquet (relative to the run dir) of sample_id → target log-odds."""
    epochs: float | None = None
    lr: float | None = None
    train_heads: bool | None = None
    seed: int = 0
    kind: Literal["trained", "linearized", "reference"] = "trained"
    inputs: str = ""
    """Fingerprint of upstream artifacts the job depends on beyond the configuration (a
    boosting learner: the group ensemble whose residual it fits)."""
    train_samples: dict[str, int] | None = None
    """At most this many training samples of these tasks (a sample seeded by the job's seed): a grown
    group's kept tasks replayed next to an added one (``grow.replay``). None: every sample."""

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["train_samples"] is None:  # jobs without it keep the fingerprints they always had
            del data["train_samples"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "AdapterJob":
        return cls(**data)

    def fingerprint(self, cfg: RunConfig, data_fingerprint: str) -> str:
        """Hash of everything that determines this adapter: the job, model, adapter, training
        settings, the probed heads' config and the data."""
        relevant = {
            "job": self.to_dict(),
            "model": model_fingerprint(cfg.model),
            "adapter": cfg.adapter.model_dump(mode="json"),
            # DDP (the default) gives the same adapter on any number of workers; DeepSpeed
            # settings (bf16) can change it, so they count only when it is used.
            "train": cfg.train.model_dump(mode="json", exclude={"num_workers", "cpus_per_worker", "use_gpu", "gpus_per_worker", "max_failures",
                                                   "micro_batch_size", "gradient_checkpointing"}
                                          | ({"early_stopping_ties"} if cfg.train.early_stopping_ties == "earliest" else set())
                                          | ({"strategy", "deepspeed"} if cfg.train.strategy == "ddp" else set())),
            "boost": cfg.boost.model_dump(mode="json", exclude={"steps", "line_search", "step_size"}) if self.loss != "ce" or self.kind == "linearized" else None,
            "featurize": cfg.featurize.model_dump(mode="json", include={"probe", "probe_samples_per_task", "probe_l2", "dim", "projection"}),
            "seed": cfg.seed,
            "data": data_fingerprint,
            **fingerprint_part(cfg.compute.precision),
        }
        return fingerprint(relevant)


def job_done(run_dir: Path, job: AdapterJob, fingerprint: str) -> bool:
    rec = read_job_record(run_dir, job.id)
    layout = RunLayout(run_dir)
    return (
        rec is not None
        and rec.get("fingerprint") == fingerprint
        and layout.output(job.id).is_file()
        and layout.adapter(job.id).is_dir()
    )
