"""The whole run config: every section, plus run-wide settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .algorithm import AnalyzeConfig, ClusterConfig, EstimateConfig, FeaturizeConfig, FidelityConfig
from .federated import FederatedConfig, RayConfig
from .sections import AdapterConfig, ComputeConfig, ModelConfig, SplitConfig, SuiteConfig, TaskConfig, _Section
from .training import BaselinesConfig, BoostConfig, EnsembleConfig, EvaluateConfig, GrowConfig, TrainConfig, TuneConfig


class RunConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
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
    grow: GrowConfig = Field(default_factory=GrowConfig)
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

    @model_validator(mode="after")
    def _full_rank_needs_lora(self) -> RunConfig:
        if self.featurize.gradient == "full_rank" and not self._lora_family():
            raise ValueError(f"featurize.gradient: full_rank differentiates LoRA's update matrix B A; adapter.type "
                             f"{self.adapter.type!r} has none (use featurize.gradient: adapter)")
        return self

    def _lora_family(self) -> bool:
        from ..adapter_types import adapter_type

        return adapter_type(self.adapter.type).family in ("lora", "mplora")

    def feature_gradient(self) -> Literal["adapter", "full_rank"]:
        """``featurize.gradient`` resolved: ``auto`` is ``full_rank`` for the LoRA family, else ``adapter``."""
        g = self.featurize.gradient
        if g == "auto":
            return "full_rank" if self._lora_family() else "adapter"
        return g

    def resolved_data_root(self) -> Path:
        root = self.data_root or os.environ.get("ELORA_DATA_ROOT") or "../shared/data"
        return Path(root)
