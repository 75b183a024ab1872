"""Sections of the run config for training, boosting, the ensemble, baselines, evaluation and tuning."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from .sections import _Section


class DeepSpeedConfig(_Section):
    """``train.strategy: deepspeed``: the DeepSpeed engine each Ray Train worker runs."""

    zero_stage: int = Field(2, ge=0, le=2)
    """ZeRO stage 0, 1 (optimizer state sharded) or 2 (+ gradients sharded). Stage 3 (sharded
    parameters) is not supported: evaluation and checkpoints read the full adapter on each rank."""
    bf16: bool = False
    """Train in bfloat16 (the engine casts the model; inputs are token ids, so nothing else changes)."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Merged into the DeepSpeed JSON config as is (e.g. ``{"gradient_clipping": 1.0}``);
    batch size, optimizer and ZeRO stage come from ``train``."""

    @field_validator("extra")
    @classmethod
    def _not_owned_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        owned = {"train_micro_batch_size_per_gpu": "train.batch_size", "train_batch_size": "train.batch_size",
                 "gradient_accumulation_steps": "train.batch_size", "optimizer": "train.lr / train.weight_decay (AdamW)",
                 "zero_optimization": "train.deepspeed.zero_stage", "bf16": "train.deepspeed.bf16"}
        for key in v:
            if key in owned:
                raise ValueError(f"'{key}' is set from {owned[key]}; remove it from extra")
        return v


class TrainConfig(_Section):
    """Stage 4 — one adapter per group (and every baseline adapter) with Ray Train."""

    epochs: float = Field(6.0, gt=0.0)
    lr: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(16, ge=1)
    weight_decay: float = Field(0.0, ge=0.0)
    train_heads: bool = True
    """Encoders: train the task heads along with the adapter (they start from the probe)."""
    schedule: Literal["constant", "linear"] = "constant"
    """Learning rate after warm-up: ``constant``, or ``linear`` decay to 0 at the last step."""
    warmup_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Fraction of the steps over which the learning rate rises linearly from lr/warmup_steps to lr."""
    validate_at_start: bool = True
    """Check validation before the first step too, so early stopping keeps the starting point (θ* with
    the probed heads) when no later check beats it: a trained adapter never ends worse on validation
    than the untrained model. Chosen by ``benchmarks/training_sweep.py`` (see its results)."""
    evals_per_epoch: int = Field(2, ge=1)
    """Validation checks per epoch (early stopping and checkpoints happen at these points)."""
    patience: int = Field(4, ge=0)
    """Stop after this many checks without improving ``early_stopping_metric`` (0: never)."""
    early_stopping_metric: Literal["loss", "accuracy", "task_accuracy"] = "task_accuracy"
    """What a check must improve: validation ``loss``, ``accuracy`` over all validation samples, or
    ``task_accuracy`` (each task's accuracy counted once: the average the reports show). Validation
    loss can rise while accuracy still improves (a few confident mistakes cost more loss than new
    correct answers save), so stopping on loss ends training early; the defaults (task_accuracy,
    6 epochs, patience 4) were chosen by ``benchmarks/training_sweep.py`` (see its results)."""
    early_stopping_ties: Literal["earliest", "loss"] = "earliest"
    """A check whose ``early_stopping_metric`` equals the best so far: ``earliest`` keeps the earlier check,
    ``loss`` takes the later one when its validation loss is lower. With 50 validation samples an accuracy
    moves in steps of 2%, and ties are common: in the decoder benchmark's three seeds, 15 of 92 adapter jobs had
    a later check with the same task accuracy and a lower validation loss, and 11 of those kept the untrained
    start (``benchmarks/results/ensemble_levers.md``; the CoLA group at θ*, loss 1.05, over a check at 0.67),
    which then drew the boosting step."""
    micro_batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """Samples per forward/backward; gradients accumulate over the micro-batches of each
    ``batch_size`` batch, so the adapter does not depend on it (up to float rounding). ``auto``: the
    whole batch. Either way, a micro-batch that runs out of memory is halved and retried (the size
    that ran is in the job record, ``metrics.micro_batch_size``)."""
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    """Recompute each transformer layer's activations in the backward instead of keeping them
    (activations ~layers× smaller, ~30% more compute). ``auto``: on for decoders of 1B parameters
    or more (``elora plan`` shows the effect), off below, where memory is never the limit."""
    num_workers: int = Field(0, ge=0)
    """Ray Train workers per adapter. 0: Ray Train local mode inside one Ray task per adapter
    (adapters train concurrently as CPUs allow); ≥ 1: data-parallel (DDP) workers."""
    cpus_per_worker: float = Field(1.0, gt=0.0)
    use_gpu: bool | Literal["auto"] = "auto"
    """``auto``: GPUs when the cluster has them."""
    gpus_per_worker: Annotated[float, Field(gt=0.0, le=1.0)] | Literal["auto"] = "auto"
    """GPU share of a local-mode job (or of each Ray Train worker) when GPUs are used; a fraction packs
    several small adapters (and the fidelity fine-tunes) on one GPU. ``auto``: a single-process job
    (``num_workers`` 0 or 1) gets 1/k of a GPU, k = floor(GPU memory / (its planned peak × 1.25)),
    1 ≤ k ≤ 8, when the GPU's memory is known (this machine has the GPUs; ``elora plan`` shows the
    share); a whole GPU when it is not, and always for ≥ 2 data-parallel (NCCL) workers."""
    max_failures: int = Field(1, ge=0)
    """Ray Train restarts of a failed run (it resumes from its last checkpoint)."""
    seed: int | None = None
    """Training seed (batch order); default the run seed."""
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    """Data parallelism across ``num_workers`` ≥ 1 workers: PyTorch DDP, or DeepSpeed ZeRO
    (``pip install 'elora_ray[deepspeed]'``; GPU clusters, and CPU with gloo)."""
    deepspeed: DeepSpeedConfig = Field(default_factory=lambda: DeepSpeedConfig())

    @model_validator(mode="after")
    def _nccl_ranks_on_own_gpus(self) -> "TrainConfig":
        if self.use_gpu is True and self.num_workers >= 2 and self.gpus_per_worker != "auto" and self.gpus_per_worker < 1:
            raise ValueError(f"train.num_workers={self.num_workers} data-parallel workers with gpus_per_worker="
                             f"{self.gpus_per_worker:g} would put two NCCL ranks on one GPU (NCCL refuses that); set "
                             "train.gpus_per_worker: 1, or train.num_workers: 0 to pack adapters on a GPU by fraction")
        return self

    @model_validator(mode="after")
    def _deepspeed_needs_workers(self) -> "TrainConfig":
        if self.strategy == "deepspeed" and self.num_workers < 1:
            raise ValueError("strategy: deepspeed needs train.num_workers ≥ 1 (Ray Train workers with a process group)")
        return self


class BoostConfig(_Section):
    """Stage 5 — b gradient-boosting steps on the groups with the highest training loss."""

    steps: int = Field(1, ge=0)
    """b: boosting adapters added in total."""
    method: Literal["linearized", "trained"] = "linearized"
    """``linearized``: ridge regression of the residual 1 − p on the projected gradients (no
    training); ``trained``: fine-tune a new adapter on the squared loss to the residual."""
    step_size: float = Field(0.1, gt=0.0)
    """η: shrinkage of each boosting adapter's contribution to its group (paper: 0.1)."""
    line_search: bool = True
    """Scale each new learner by the multiplier ρ that minimises its group's training log loss
    before shrinking by η (Friedman's gradient boosting). ``false``: the paper's plain η·output."""
    l2: float = Field(1e-3, ge=0.0)
    """Ridge λ (scaled by the mean squared feature norm, as in the estimate stage)."""
    epochs: float | None = Field(None, gt=0.0)
    """``trained``: epochs (default ``train.epochs``)."""
    lr: float | None = Field(None, gt=0.0)
    """``trained``: learning rate (default ``train.lr``)."""
    keep: Literal["always", "if_validation_improves"] = "always"
    """``if_validation_improves``: a step whose learner raises its group's validation log loss enters with
    coefficient 0 (recorded as rejected in ``boost/steps.json``), and that group is not boosted again; the
    remaining steps go to the other groups. ``always``: every step is kept (the paper)."""


class EnsembleConfig(_Section):
    """Stage 6 — per-task convex weights combining the group ensembles, fit on validation."""

    weights: Literal["learned", "shrunk", "uniform", "own_group"] = "learned"
    """``learned``: minimise the validation log loss over the simplex; ``shrunk``: the learned weights
    pulled toward uniform by the amount (0 to 1) that cross-validation on the validation set picks
    (``cv_folds``; :mod:`elora_ray.ensemble.shrinkage`); ``uniform``: equal weights; ``own_group``:
    each task uses only its own group."""
    solver: Literal["auto", "first_order", "CLARABEL", "SCS"] = "auto"
    """``learned`` weights' solver (the federated ensemble's too): ``CLARABEL``/``SCS`` through
    cvxpy (small label sets), ``first_order`` (projected gradient, any vocabulary size), ``auto``:
    cvxpy's CLARABEL for small problems, ``first_order`` for large ones (same optimum)."""
    shrink: float = Field(0.0, ge=0.0)
    """L2 pull of each task's weights towards its own group (helps tiny validation sets)."""
    cv_folds: int = Field(5, ge=2)
    """``weights: shrunk``: folds of each task's validation samples the shrinkage is chosen on."""


BASELINE_METHODS = ("single_adapter", "single_qlora", "per_task_adapters", "mtl_ft", "random_groups", "gradient_cosine")


class BaselinesConfig(_Section):
    """Baselines trained under the same protocol as the ensemble (same epochs, lr, seed)."""

    methods: list[Literal[
        "single_adapter", "single_qlora", "per_task_adapters", "mtl_ft", "random_groups", "gradient_cosine"
    ]] = Field(default_factory=lambda: list(BASELINE_METHODS))
    finetune_epochs: float | None = Field(None, gt=0.0)
    """MTL-FT: epochs of per-task fine-tuning after the shared adapter (default ``train.epochs``)."""


class EvaluateConfig(_Section):
    split: Literal["test", "validation"] = "test"
    batch_size: int = Field(64, ge=1)


class GrowConfig(_Section):
    """``elora add-task`` / ``remove-task``: how a group whose tasks changed is retrained."""

    replay: float | Literal["all"] = "all"
    """Training samples of the group's kept tasks, as a multiple of the added tasks' training samples
    (spread evenly over the kept tasks; a seeded sample of each): the retraining's cost then follows the
    added data, not the group's size. ``all``: every sample of every task of the group."""

    @field_validator("replay")
    @classmethod
    def _positive(cls, v):
        if v != "all" and not v > 0:
            raise ValueError("must be a positive multiple or 'all'")
        return v


class TuneConfig(_Section):
    """``elora tune`` — Ray Tune chooses m (groups) and b (boosting steps)."""

    objective: Literal["estimated", "validation"] = "estimated"
    """``estimated``: Algorithm 2 in the linearised model (no fine-tuning; seconds);
    ``validation``: train the ensemble for each m and measure it on the validation split."""
    min_groups: int = Field(1, ge=1)
    max_groups: int = Field(8, ge=1)
    max_boost_steps: int = Field(5, ge=0)
    """b is searched in 0 … max_boost_steps (ASHA's time attribute)."""
    l2: list[float] | None = None
    """Also search the surrogate's λ over these values (default: ``estimate.l2`` only)."""
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)
    cpus_per_trial: float = Field(1.0, gt=0.0)
    """``estimated``: CPUs per trial. ``validation``: see ``train_slots``."""
    train_slots: int = Field(1, ge=1)
    """``validation``: training slots (bundles of ``train.cpus_per_worker`` CPUs) in each trial's
    placement group; its group adapters train in them, so trials never starve each other."""
