"""The run directory: where every artifact of a run lives, in one place.

Every stage writes under one run directory, keyed by task name, sample id or job id, so a
killed run resumes where it stopped. Stages find each other's files through
:class:`RunLayout` (and read them with :mod:`elora_ray.artifacts`), never by importing the
producing stage::

    <run>/
      config.yaml, run.log, model.json     resolved config, log, model + adapter check
      data/manifest.json                   prepare: labels, sizes, sources per task (written last)
      data/<task>/<split>.parquet          prepare: samples keyed by sample id
      features/                            featurize: manifest.json, heads.safetensors, <split>/<task>/part-*.parquet
      estimate/                            estimate: state.json, subsets.json, chunks/, results.parquet, summary.json
      affinity.csv, affinity.json          estimate: the task affinity (+ affinity_half_{a,b}.csv or _raw/_counts.csv)
      calibration.json                     calibrate: the surrogate's constant for estimate.l2: auto
      groups.json                          cluster: the task groups and every m's criterion
      adapters/<job>/                      train / boost / baselines: PEFT adapter (safetensors)
      outputs/<job>.parquet                logits per (split, task, sample_id)
      train/jobs/<job>.json                job record, written last (present = job done)
      ray_train/                           Ray Train's run folders (checkpoints)
      boost/                               boost: state and residual targets
      ensemble/members.json, weights.json  train + boost: members; combine: weights
      baselines/plans.json                 baselines: the jobs of every baseline method
      evaluation.json, report.{json,md}    evaluate / run
      grow/                                add-task / remove-task: history.json, report.md
      tune/, fidelity/, federated/, analyze/sharpness/
      plots/, metrics/, tensorboard/
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATA_DIR = "data"
FEATURE_DIR = "features"
EST_DIR = "estimate"
ADAPTER_DIR = "adapters"
OUTPUT_DIR = "outputs"
JOB_DIR = Path("train") / "jobs"
RAY_TRAIN_DIR = "ray_train"
BOOST_DIR = Path("boost")
ENSEMBLE_DIR = Path("ensemble")
MEMBERS_FILE = ENSEMBLE_DIR / "members.json"
WEIGHTS_FILE = ENSEMBLE_DIR / "weights.json"
PLANS_FILE = Path("baselines") / "plans.json"
EVALUATION_FILE = "evaluation.json"
AFFINITY_FILE = "affinity.csv"
AFFINITY_META_FILE = "affinity.json"
AFFINITY_RAW_FILE = "affinity_raw.csv"
AFFINITY_COUNTS_FILE = "affinity_counts.csv"
HALF_FILES = ("affinity_half_a.csv", "affinity_half_b.csv")
CALIBRATION_FILE = "calibration.json"
GROUPS_FILE = "groups.json"
TUNE_DIR = "tune"
FIDELITY_DIR = "fidelity"
FED_DIR = "federated"
SHARPNESS_DIR = Path("analyze") / "sharpness"
GROW_DIR = "grow"
"""``elora add-task`` / ``remove-task``: state.json (while growing), history.json, report.md."""
PLOTS_DIR = "plots"
METRICS_DIR = "metrics"
TENSORBOARD_DIR = "tensorboard"
THETA_STAR = "theta_star"
"""Job id of the untrained model at θ* (adapter at init, probed heads): its outputs are the
reference the boosting learners are measured against."""


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run directory's artifacts (nothing is created or read here)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # run-level files
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "run.log"

    @property
    def model_check(self) -> Path:
        return self.root / "model.json"

    @property
    def plan(self) -> Path:
        """The resource plan checked at the start of every invocation (:mod:`elora_ray.plan`)."""
        return self.root / "plan.json"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    # prepare
    @property
    def data(self) -> Path:
        return self.root / DATA_DIR

    @property
    def data_manifest(self) -> Path:
        return self.data / "manifest.json"

    def data_split(self, task: str, split: str) -> Path:
        return self.data / task / f"{split}.parquet"

    # featurize
    @property
    def features(self) -> Path:
        return self.root / FEATURE_DIR

    @property
    def features_manifest(self) -> Path:
        return self.features / "manifest.json"

    @property
    def heads(self) -> Path:
        """The probed task heads at θ* (encoders only)."""
        return self.features / "heads.safetensors"

    # estimate / calibrate / cluster
    @property
    def estimate(self) -> Path:
        return self.root / EST_DIR

    @property
    def affinity(self) -> Path:
        return self.root / AFFINITY_FILE

    @property
    def affinity_meta(self) -> Path:
        return self.root / AFFINITY_META_FILE

    @property
    def affinity_raw(self) -> Path:
        return self.root / AFFINITY_RAW_FILE

    @property
    def affinity_counts(self) -> Path:
        return self.root / AFFINITY_COUNTS_FILE

    @property
    def affinity_halves(self) -> tuple[Path, Path]:
        return self.root / HALF_FILES[0], self.root / HALF_FILES[1]

    @property
    def calibration(self) -> Path:
        return self.root / CALIBRATION_FILE

    @property
    def groups(self) -> Path:
        return self.root / GROUPS_FILE

    # adapter jobs (train, boost, baselines)
    def adapter(self, job_id: str) -> Path:
        return self.root / ADAPTER_DIR / job_id

    def output(self, job_id: str) -> Path:
        return self.root / OUTPUT_DIR / f"{job_id}.parquet"

    @property
    def job_records(self) -> Path:
        return self.root / JOB_DIR

    def job_record(self, job_id: str) -> Path:
        return self.job_records / f"{job_id}.json"

    @property
    def ray_train(self) -> Path:
        return self.root / RAY_TRAIN_DIR

    @property
    def boost(self) -> Path:
        return self.root / BOOST_DIR

    @property
    def members(self) -> Path:
        return self.root / MEMBERS_FILE

    @property
    def weights(self) -> Path:
        return self.root / WEIGHTS_FILE

    @property
    def baseline_plans(self) -> Path:
        return self.root / PLANS_FILE

    @property
    def evaluation(self) -> Path:
        return self.root / EVALUATION_FILE

    # side stages
    @property
    def tune(self) -> Path:
        return self.root / TUNE_DIR

    @property
    def fidelity(self) -> Path:
        return self.root / FIDELITY_DIR

    @property
    def federated(self) -> Path:
        return self.root / FED_DIR

    @property
    def sharpness(self) -> Path:
        return self.root / SHARPNESS_DIR

    # observability
    @property
    def plots(self) -> Path:
        return self.root / PLOTS_DIR

    def plot(self, name: str) -> Path:
        return self.plots / name

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_DIR

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD_DIR
