"""Sections of the run config for the federated setting and the Ray connection."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from .sections import TaskConfig, _Section


class FederatedConfig(_Section):
    """``elora federated`` — FedAvg over many clients (the paper's 500-role Shakespeare setting).

    Clients come from a plain-text play (``source``): every speech is attributed to its role
    (the ``NAME:`` line before it); each role's speeches, in order, are cut into consecutive
    clients of at most ``client_chars`` characters (a speech is never cut); clients with
    fewer than ``min_client_chars`` characters are dropped. Each client's token stream is split
    80/20 into a train and a test region (``test_fraction``), the end of the train region is
    its validation region; samples are windows of ``context_tokens`` tokens; each position predicts the next token
    (``targets: all``), or only the token after the window does (``last``, as in LEAF's Shakespeare).
    """

    source: str | None = None
    """The play text; default ``<data_root>/shakespeare/tinyshakespeare.txt``."""
    include_play: bool = True
    """Clients from the play's roles (turn off to use ``sources`` alone)."""
    sources: list[TaskConfig] = Field(default_factory=list)
    """More clients, from other text: each entry is a task definition (a built-in reader such as
    ``glue/sst2``, or files) whose training examples' texts, in order, are cut into clients of at most
    ``client_chars`` characters (an example is never cut), named ``<name>#<k>``. Labels are ignored.
    Every client's origin (the play or the source's name) is recorded, and the client groups are
    scored against it (ARI / NMI in ``groups.json``)."""
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
    targets: Literal["all", "last"] = "all"
    """Next-token targets of a window: ``all`` its positions (position t predicts token t + 1; the
    last predicts the token after the window), or only the token after it (``last``)."""
    weight_positions: int = Field(256, ge=1)
    """Combination weights: (window, position) targets per group they are fitted on (a seeded sample
    of the group's validation windows), which bounds the cached logits to positions × members × vocab."""
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
    num_groups: Annotated[int, Field(ge=1)] | Literal["auto"] = 10
    """m: client groups, one federated adapter each (paper: 10–30 for 500 clients); ``auto``: chosen in
    1..cluster.max_groups as ``elora cluster`` does (``cluster.select_m``, on the affinity's two halves)."""
    num_subsets: int = Field(2000, ge=1)
    subset_size: int = Field(10, ge=1)
    """k subsets of this many clients for the affinity estimate (paper: 2,000 of size 10)."""
    warm_start: bool = True
    """Group adapters start from the global FedAvg adapter (trained first; its cost counts for the
    ensemble), and that adapter is a candidate member of every group's combination weights."""
    boost_steps: int = Field(1, ge=0)
    methods: list[Literal["fedavg", "mtl_ft", "ensemble", "random_groups"]] = Field(
        default_factory=lambda: ["fedavg", "mtl_ft", "ensemble"])
    """``random_groups``: the ensemble's procedure on random groups of the ensemble's sizes (a control)."""
    engine: Literal["actors", "ray_train"] = "actors"
    """Who runs FedAvg's local client training. ``ray_train``: one Ray Train ``TorchTrainer`` per adapter
    being federated, whose ``train_workers`` workers each train their share of a round's sampled clients
    and all-reduce the window-weighted adapter sums (``FailureConfig`` restarts resume at the last
    round). ``actors``: the client actor pool that also serves featurisation and evaluation (each
    client update is a few optimizer steps; `benchmarks/federated_engines.py` compares the two)."""
    train_workers: int = Field(0, ge=0)
    """``engine: ray_train``: workers per trainer; 0 is Ray Train's local mode (one process per group)."""
    workers: int | None = Field(None, ge=1)
    """Size of the client actor pool (default: the cluster's CPUs)."""
    gpus_per_worker: Annotated[float, Field(ge=0.0, le=1.0)] | Literal["auto"] = "auto"
    """GPU share each client actor reserves (its model, training, featurisation and scoring run there;
    a fraction lets several actors share one GPU). ``auto`` on a cluster with GPUs: when the GPU's
    memory is known (this machine has the GPUs), 1/k of one, k = floor(GPU memory / (a client's
    planned peak × 1.25)), 1 ≤ k ≤ 8, and (``workers`` unset) a pool of k actors per GPU as the CPUs
    and memory allow; otherwise the cluster's GPUs shared evenly by the pool (at most 1 each). The
    workers of ``engine: ray_train`` get the same, a whole GPU each with ≥ 2 ``train_workers`` (NCCL
    ranks). 0 without GPUs; give a number on an autoscaling cluster."""
    max_retries: int = Field(1, ge=0)
    """A client call that fails is retried this many times, then excluded with a log line."""


class RayConfig(_Section):
    address: str | None = None
    """``None``: connect to ``$RAY_ADDRESS`` if set, else start a local instance."""
    num_cpus: int | None = None
    """Local instance only: CPUs Ray may use (default: all)."""
