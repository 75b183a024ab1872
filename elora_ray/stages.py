"""The stages, as data: one list that the pipeline runner, the CLI and ``jobs/`` are made from.

A :class:`Stage` says what a stage is called, what it needs and writes, how to run it and
which of its results are worth plotting. ``PIPELINE`` is the ``elora run`` order; ``SIDE``
holds the stages that run on demand after a pipeline stage (tune, fidelity, ...).

Adding a stage: write its module with a ``run(cfg, run_dir, force=False, **options) -> dict``
function that skips itself when its artifacts are current, then add one :class:`Stage` here.
The CLI subcommand (``elora <command>``), its ``--force`` flag, metrics logging and the
``jobs/<name>.py`` check follow from the entry.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .config import RunConfig
from .layout import (ADAPTER_DIR, AFFINITY_FILE, AFFINITY_META_FILE, BOOST_DIR, CALIBRATION_FILE, DATA_DIR, EST_DIR,
                     EVALUATION_FILE, FEATURE_DIR, FED_DIR, FIDELITY_DIR, GROUPS_FILE, HALF_FILES, JOB_DIR, MEMBERS_FILE,
                     OUTPUT_DIR, PLANS_FILE, PLOTS_DIR, SHARPNESS_DIR, TUNE_DIR, WEIGHTS_FILE)

Metrics = dict[str, list[tuple[int, dict]]]
"""{scope: [(step, {name: value})]}: what the runner logs to metrics/ (and TensorBoard, MLflow)."""


@dataclass(frozen=True)
class Stage:
    name: str
    """Key of its result in ``run_stages`` and in ``metrics/stages/<name>``."""
    help: str
    """One line for ``elora --help``."""
    description: str
    """The subcommand's ``--help`` text."""
    run: Callable[..., dict]
    """``run(cfg, run_dir, force=False, **options) -> result``; skips itself when current."""
    outputs: tuple[str, ...] = ()
    """What it writes, relative to the run directory (see :mod:`elora_ray.layout`)."""
    after: str | None = None
    """Side stages: the pipeline stage run (if needed) before it; pipeline stages need every earlier one."""
    metrics: Callable[[dict], Metrics] | None = None
    forceable: bool = True
    """Whether ``--force`` means something (redo even if current)."""
    arguments: Callable[[argparse.ArgumentParser], argparse.ArgumentParser | None] | None = None
    """Adds extra CLI flags (their values reach ``run`` as keyword ``options``); may return the
    sub-parser that takes the common flags (``elora analyze sharpness --out ...``)."""
    show: Callable[[dict, Path], str] | None = None
    """What the CLI prints when the stage is done (e.g. its summary table)."""
    command: str = ""
    """CLI subcommand (default: the name with '-' for '_')."""
    options: tuple[str, ...] = field(default=())
    """Names of the parsed CLI arguments passed to ``run``."""
    wants_runner: bool = False
    """``run`` gets ``runner=run_stages`` (a stage that runs pipeline stages itself: tune's validation trials)."""
    always_runs: bool = False
    """Does its work on every invocation (the model check loads the model each time): never reported
    as skipped, even when its result happens to equal the last one."""

    @property
    def cli(self) -> str:
        return self.command or self.name.replace("_", "-")


# --- pipeline stages (lazy imports: `elora --help` must not import torch) ----------------------

def _prepare(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    from .layout import RunLayout
    from .prepare import prepare, write_run_config

    result = prepare(cfg, out, force=force)
    if not RunLayout(out).config.is_file():  # a new run's config, even if a later stage of this command fails;
        write_run_config(cfg, out)           # later commands record theirs once they succeed (pipeline.py)
    return result


def _model_check(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    from .model_check import check_model_on_worker

    return check_model_on_worker(cfg, out)


def _featurize(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    from .featurize import featurize

    return featurize(cfg, out, force=force)


def _estimate(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    from .estimate import estimate

    return estimate(cfg, out, force=force)


def _cluster(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    from .cluster.stage import cluster_stage

    return cluster_stage(cfg, out, force=force)


def _train(cfg: RunConfig, out: Path, force: bool = False, with_baselines: bool = False) -> dict:
    """``with_baselines`` (the pipeline runner sets it when the baselines stage follows in the same
    invocation, without --force): the baselines that need only the groups train in the same pool."""
    from .train.stage import train_stage

    also = []
    if with_baselines and cfg.baselines.methods:
        from .baselines.stage import first_wave_jobs

        also = first_wave_jobs(cfg, out)
    return train_stage(cfg, out, force=force, also=also)


def _boost(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    from .boost.stage import boost_stage

    return boost_stage(cfg, out, force=force)


def _combine(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    from .ensemble.stage import combine_stage

    return combine_stage(cfg, out, force=force)


def _baselines(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    from .baselines.stage import baselines_stage

    return baselines_stage(cfg, out, force=force)


def _evaluate(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    from .evaluate.stage import evaluate_stage

    return evaluate_stage(cfg, out, force=force)


def _featurize_metrics(r: dict) -> Metrics:
    keys = ("samples", "tokens", "flops", "seconds", "samples_per_s_this_run", "shards_resumed")
    return {"stages/featurize": [(0, {k: r.get(k) for k in keys})]}


def _estimate_metrics(r: dict) -> Metrics:
    return {"stages/estimate": [(0, {k: r.get(k) for k in ("num_subsets", "subset_size", "coverage", "seconds")})]}


def _cluster_metrics(r: dict) -> Metrics:
    return {"stages/cluster": [(0, {"m": r.get("m"), "average_density": r.get("score")})]}


def _boost_metrics(r: dict) -> Metrics:
    keys = ("train_loss_before", "train_loss_after", "validation_loss_before", "validation_loss_after", "rho", "coef")
    return {"stages/boost": [(s["step"] + 1, {k: s.get(k) for k in keys}) for s in r.get("steps", [])]}


def _evaluate_metrics(r: dict) -> Metrics:
    out: Metrics = {}
    for name, m in r.get("methods", {}).items():
        row = {k: m.get(k) for k in ("avg_accuracy", "loss", "train_flops", "peak_memory_mb", "wall_s")}
        row.update({f"accuracy/{t}": a for t, a in m.get("per_task", {}).items()})
        out[f"evaluate/{name}"] = [(0, row)]
    return out


PIPELINE: tuple[Stage, ...] = (
    Stage("prepare", "load, validate and split the tasks; write data/<task>/<split>.parquet",
          "Load every task, check it (labels, fields, encodings), carve missing splits with a fixed seed, and "
          "write the data keyed by sample id under --out/data.",
          _prepare, outputs=(DATA_DIR, "config.yaml")),
    Stage("model_check", "build model + adapter, count truncations, run one batch",
          "Build the model and adapter from the config, count samples truncated to model.max_length, run a "
          "forward/backward pass and write --out/model.json.",
          _model_check, outputs=("model.json",), forceable=False, command="check-model", always_runs=True),
    Stage("featurize", "projected per-sample gradients at θ* (Ray Data); resumable",
          "Stream every train/validation sample through a Ray Data actor pool that computes the JL-projected "
          "per-sample gradient of the gold-class log-odds w.r.t. the adapter at initialisation (encoders: after a "
          "linear probe of the task heads). Writes --out/features/<split>/<task>/part-*.parquet; a rerun skips "
          "finished shards.",
          _featurize, outputs=(FEATURE_DIR,), metrics=_featurize_metrics),
    Stage("estimate", "task affinity from the features (estimate.affinity) → affinity.csv",
          "Estimate how training on one task moves another from the projected gradients: first_order (default, "
          "closed form), transfer (k subset fits as Ray tasks, pairwise model) or paper (eq. 1). Writes "
          "affinity.csv, affinity_half_a/b.csv and estimate/. Runs prepare/featurize first if their artifacts "
          "are missing.",
          _estimate, outputs=(EST_DIR, AFFINITY_FILE, AFFINITY_META_FILE, *HALF_FILES), metrics=_estimate_metrics),
    Stage("cluster", "SDP clustering of affinity.csv → groups.json + plots/affinity.png",
          "Partition the tasks into m groups by the SDP relaxation of average intra-cluster density (m chosen by "
          "cluster.select_m, or cluster.num_groups). Runs the earlier stages first if their artifacts are missing.",
          _cluster, outputs=(GROUPS_FILE, f"{PLOTS_DIR}/affinity.png"), metrics=_cluster_metrics),
    Stage("train", "one adapter per group with Ray Train → adapters/group-*",
          "Train one adapter per group of groups.json with Ray Train (TorchTrainer; local mode on CPU, DDP with "
          "train.num_workers ≥ 1), early-stopped on train.early_stopping_metric (default: validation accuracy with each task counted "
          "once); groups train concurrently. Writes "
          "adapters/<id>/, outputs/<id>.parquet and ensemble/members.json. Runs earlier stages if needed.",
          _train, outputs=(ADAPTER_DIR, OUTPUT_DIR, str(JOB_DIR), str(MEMBERS_FILE))),
    Stage("boost", "b gradient-boosting adapters on the worst groups",
          "Add boost.steps boosting adapters, each fit to the residual 1 − p of the group with the highest training "
          "loss (boost.method: linearized ridge on projected gradients, or trained).",
          _boost, outputs=(str(BOOST_DIR), str(MEMBERS_FILE)), metrics=_boost_metrics),
    Stage("combine", "learn the per-task combination weights on validation → ensemble/weights.json",
          "Fit per-task convex weights over the group ensembles minimising the validation log loss (ensemble.solver: "
          "cvxpy, or a first-order solver for large problems).",
          _combine, outputs=(str(WEIGHTS_FILE),)),
    Stage("baselines", "train the baselines (single adapter, QLoRA, per-task, MTL-FT, random/gradient groups)",
          "Train every method in baselines.methods under the ensemble's protocol.",
          _baselines, outputs=(str(PLANS_FILE), ADAPTER_DIR, OUTPUT_DIR)),
    Stage("evaluate", "accuracy and cost of every method → evaluation.json",
          "Per-task accuracy of the ensemble and the baselines on evaluate.split, with FLOPs, memory and time. "
          "Skipped when evaluation.json matches the current adapters; --force recomputes it.",
          _evaluate, outputs=(EVALUATION_FILE,), metrics=_evaluate_metrics),
)


# --- side stages: run on demand after a pipeline stage --------------------------------------------

def _tune(cfg: RunConfig, out: Path, force: bool = False, runner: Callable[..., dict] | None = None) -> dict:
    from .tune.stage import tune_stage

    return tune_stage(cfg, out, runner=runner)


def _show_tune(best: dict, out: Path) -> str:
    return (f"best: m={best['m']}, b={best['b']} (validation loss {best['val_loss']:.4f}); train it with: "
            f"elora run --out {out} --set {' --set '.join(best['overrides'])}\n")


def _fidelity(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    from .estimate.fidelity import run_fidelity

    return run_fidelity(cfg, out)


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subsets", type=int, default=6, help="subsets to fine-tune (default 6)")


def _calibrate(cfg: RunConfig, out: Path, force: bool = False, subsets: int = 6) -> dict:
    from .errors import ConfigError
    from .estimate.calibrate import calibrate

    if subsets < 2:
        raise ConfigError(f"--subsets must be at least 2; got {subsets}")
    return calibrate(cfg, out, num_subsets=subsets)


def _show_calibrate(data: dict, out: Path) -> str:
    from .estimate.calibrate import render_calibration

    return render_calibration(data)


def _federated(cfg: RunConfig, out: Path, force: bool = False) -> dict:
    from .federated.stage import federated_stage

    return federated_stage(cfg, out, force=force)


def _analyze_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    return sub.add_parser("sharpness", help="Hessian-trace sharpness and train-test gap vs adapter rank and ensembles",
                   description="For each task of analyze.sharpness.tasks: train single adapters of each rank in "
                   "analyze.sharpness.ranks and ensembles of k adapters (analyze.sharpness.ensemble_sizes) whose "
                   "ranks sum to analyze.sharpness.total_rank, then measure the generalization gap (test - train "
                   "loss) and the Hessian trace of the per-sample loss w.r.t. the adapter weights (Hutchinson; max "
                   "and mean over training points). One Ray task per variant; resumable. Writes "
                   "--out/analyze/sharpness/ and plots/sharpness.png.")


def _analyze(cfg: RunConfig, out: Path, force: bool = False, analysis: str = "sharpness") -> dict:
    from .analyze.generalization import run_sharpness

    return run_sharpness(cfg, out)


def _summary_md(folder: Callable[[Path], Path]) -> Callable[[dict, Path], str]:
    def show(result: dict, out: Path) -> str:
        return (folder(out) / "summary.md").read_text()
    return show


def _layout(out: Path):
    from .layout import RunLayout

    return RunLayout(out)


SIDE: tuple[Stage, ...] = (
    Stage("tune", "Ray Tune: choose m and b from the estimated objective (seconds)",
          "Search the number of groups m (tune.min_groups..max_groups) and boosting steps b (0..tune.max_boost_steps, "
          "ASHA's time attribute) with Ray Tune, scoring each by Algorithm 2 run in the linearised model (no "
          "fine-tuning). Writes tune/trials.csv, tune/best.json and plots/tune_objective.png. Runs "
          "featurize/estimate first if needed.",
          _tune, outputs=(TUNE_DIR,), after="estimate", forceable=False, show=_show_tune, wants_runner=True),
    Stage("fidelity", "estimated vs really fine-tuned subset performance (+ cost ratio)",
          "Really fine-tune the adapter on fidelity.num_subsets random task subsets (one Ray task each) and compare "
          "with the linearised estimate: first-order error of h, relative error and Spearman of the validation "
          "loss, and the FLOPs / wall-time ratio. Writes --out/fidelity/ and plots/fidelity.png. Runs featurize "
          "first if needed.",
          _fidelity, outputs=(FIDELITY_DIR,), after="featurize", forceable=False,
          show=_summary_md(lambda out: _layout(out).fidelity)),
    Stage("calibrate", "fit the surrogate's regularisation constant from a few real fine-tunes",
          "Really fine-tune --subsets random task subsets with the train settings and keep the constant c of "
          "estimate.l2: auto (λ = c·batch/(2·lr·epochs·N)) that predicts their validation loss best. Writes "
          "--out/calibration.json (and the user cache, reused by later runs of the same model + adapter). Runs "
          "featurize first if needed.",
          _calibrate, outputs=("calibrate", CALIBRATION_FILE), after="featurize", forceable=False,
          arguments=_calibrate_args, options=("subsets",), show=_show_calibrate),
    Stage("federated", "FedAvg over many clients (Shakespeare roles): baselines + federated ensemble",
          "Derive clients from federated.source (roles of a play, split into chunks), then run federated.methods: "
          "FedAvg (one adapter), MTL-FT (FedAvg + per-client fine-tuning) and the federated EnsembleLoRA (client "
          "affinity → groups → one FedAvg adapter per group → boosting → learned weights). Needs a decoder, e.g. "
          "--config benchmarks/configs/federated_shakespeare_smollm2.yaml. Writes <out>/federated/report.{json,md} "
          "and plots; resumable.",
          _federated, outputs=(FED_DIR,), show=lambda r, out: (_layout(out).federated / "report.md").read_text()),
    Stage("analyze", "analyses of adapters: `elora analyze sharpness`",
          "Analyses of fine-tuned adapters (paper Section 4).",
          _analyze, outputs=(str(SHARPNESS_DIR),), after="prepare", forceable=False, arguments=_analyze_args,
          options=("analysis",), show=_summary_md(lambda out: _layout(out).sharpness)),
)

STAGES: tuple[Stage, ...] = PIPELINE + SIDE


def pipeline_names() -> tuple[str, ...]:
    return tuple(s.name for s in PIPELINE)


def get_stage(name: str) -> Stage:
    """The stage called ``name`` (pipeline name or CLI command); ValueError naming the choices otherwise."""
    key = name.replace("-", "_")
    for s in STAGES:
        if s.name == key or s.cli == name:
            return s
    raise ValueError(f"unknown stage {name!r}; stages: {', '.join(s.cli for s in STAGES)}")
