"""Sections of the run config for Algorithm 1 (featurize, estimate, cluster) and its analyses."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from .sections import _Section


class FeaturizeConfig(_Section):
    """Stage 1 — projected per-sample gradients of h(s, y) at the adapter's initialisation."""

    dim: int = Field(400, ge=1, le=100_000)
    """Projection dimension d (JL)."""
    projection: Literal["gaussian", "rademacher"] = "gaussian"
    gradient: Literal["auto", "adapter", "full_rank"] = "auto"
    """What h is differentiated against. ``adapter``: the adapter's parameters at θ* (LoRA's B,
    the bottleneck's up), JL-projected. ``full_rank`` (LoRA family only): LoRA's update matrix
    M = B A at any rank, sketched per site as it is formed (:mod:`elora_ray.featurize.update_sketch`),
    so the linearisation does not see the input through A's r random directions only; on the
    GLUE/SuperGLUE fidelity runs it predicts real fine-tuning better (loss relative error 2.6% vs
    3.6% at each one's best λ). ``auto``: ``full_rank`` for the LoRA family, ``adapter`` for
    bottleneck adapters. The federated stage always uses ``adapter`` features (it moves the
    adapter by P w); an explicit ``full_rank`` there is an error."""
    block_rows: int = Field(4096, ge=1)
    """The projection is generated this many gradient coordinates at a time (memory block_rows·d)."""
    cache_limit_mb: Annotated[float, Field(ge=0.0)] | Literal["auto"] = "auto"
    """Keep the generated projection on the featurising device when p·d·4 bytes fits this budget
    (0: regenerate every batch). ``auto``: 256 MB on a CPU; on a GPU, a quarter of its memory
    (Llama-1B with r = 4 needs 262 MB; regenerating on the CPU per batch would cap the GPU)."""
    batch_size: int = Field(32, ge=1)
    splits: list[Literal["train", "validation", "test"]] = Field(default_factory=lambda: ["train", "validation"])
    actors: int | Literal["auto"] = "auto"
    """Ray Data actor pool size; ``auto``: one per GPU, else cpus // cpus_per_actor (of the cluster
    as it is when the stage starts: on an autoscaling cluster give a number)."""
    cpus_per_actor: float = Field(1.0, gt=0.0)
    gpus_per_actor: Annotated[float, Field(ge=0.0, le=1.0)] | Literal["auto"] = "auto"
    """GPU reserved by each actor (a fraction shares one GPU between actors); ``auto``: when the
    cluster has GPUs when the stage starts, 1/k of one, k = floor(GPU memory / (an actor's planned
    peak × 1.25)), 1 ≤ k ≤ 8, if the GPU's memory is known (this machine has the GPUs; ``elora plan``
    shows the share), else 1; 0 without GPUs. The model check reserves the same. Give it explicitly
    on an autoscaling cluster (GPU nodes that do not exist yet are then started for it). An actor
    that reserved a GPU and cannot see one stops with an error instead of running on the CPU."""
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
    select_m: Literal["auto", "eigengap", "heldout", "density"] = "auto"
    """How ``num_groups: auto`` picks m. ``eigengap``: m in 2..max_groups after the largest relative
    drop in the spectrum of the double-centred affinity (diagonal set to each task's nearest
    neighbour). ``heldout``: cluster the affinity estimated on one half of every task's samples and
    keep the m in 1..max_groups whose block-constant fit best predicts the other half's (needs the
    halves the transfer / first_order affinity writes, and halves with independent noise).
    ``auto``: ``heldout`` when the halves are independent (decoders, federated clients), ``eigengap``
    when probed encoder heads were fit on all training samples, which couples the halves.
    ``density``: the largest average density (the paper's; tends to under-split). Measured on real
    planted suites in ``benchmarks/results/affinity_planted_full_rank.md``."""
    local_scaling: int | None = Field(2, ge=1)
    """Partition the self-tuning kernel exp(−d_ij²/(σ_i σ_j)) of the affinity, σ_i the distance from
    task i to its k-th nearest task (this k), instead of the affinity itself: each pair is judged
    against both tasks' own neighbourhoods, so sources whose parts sit close (BoolQ) and sources whose
    parts sit far apart (CoLA) are both found. Used by the eigengap rule and a fixed ``num_groups``;
    not by ``heldout`` or ``trace_weight``, nor for ``estimate.affinity: paper`` (not a cosine).
    ``null``: the affinity as given. k = 2 chosen on the design planted suites
    (``benchmarks/results/affinity_planted_full_rank.md``)."""
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
