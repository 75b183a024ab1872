"""Run configuration: one YAML file plus ``--set key=value`` overrides, validated up front.

Every section is a pydantic model with ``extra="forbid"`` so an unknown or misspelt key is
an error that names the key, and wrong types name the key and what was expected.
Relative paths in a config file are resolved against the directory of that file.

Sections live in :mod:`.sections` (data, model, adapter), :mod:`.algorithm` (featurize,
estimate, cluster, fidelity, analyze), :mod:`.training` (train, boost, ensemble, baselines,
evaluate, tune) and :mod:`.federated` (federated, ray); :mod:`.run` assembles them and
:mod:`.load` reads, overrides and dumps a config.
"""

from __future__ import annotations

from ..errors import ConfigError
from .algorithm import AnalyzeConfig, ClusterConfig, EstimateConfig, FeaturizeConfig, FidelityConfig, SharpnessConfig
from .federated import FederatedConfig, RayConfig
from .load import apply_override, dump_config, load_config, parse_override
from .run import RunConfig
from .sections import GENERIC_FORMATS, AdapterConfig, ComputeConfig, ModelConfig, SplitConfig, SuiteConfig, TaskConfig
from .training import (
                       BaselinesConfig,
                       BoostConfig,
                       DeepSpeedConfig,
                       EnsembleConfig,
                       EvaluateConfig,
                       TrainConfig,
                       TuneConfig,
)

__all__ = [
    "GENERIC_FORMATS", "AdapterConfig", "AnalyzeConfig", "ComputeConfig", "BaselinesConfig", "BoostConfig", "ClusterConfig", "ConfigError",
    "DeepSpeedConfig", "EnsembleConfig", "EstimateConfig", "EvaluateConfig", "FeaturizeConfig", "FederatedConfig",
    "FidelityConfig", "ModelConfig", "RayConfig", "RunConfig", "SharpnessConfig", "SplitConfig", "SuiteConfig",
    "TaskConfig", "TrainConfig", "TuneConfig", "apply_override", "dump_config", "load_config", "parse_override",
]
