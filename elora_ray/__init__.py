"""elora_ray: EnsembleLoRA on Ray — fine-tune one language model on many datasets at once.

The Python API mirrors the command line::

    import elora_ray as er

    cfg = er.load_config("my.yaml", ["adapter.rank=8"])   # elora ... --config my.yaml --set adapter.rank=8
    report = er.run(cfg, "runs/x")                        # elora run --out runs/x
    groups = er.run_stage(cfg, "runs/x", "cluster")       # elora cluster --out runs/x
    best = er.run_stage(cfg, "runs/x", "tune")            # elora tune --out runs/x
    predictor = er.EnsemblePredictor("runs/x")            # elora predict --run runs/x ...
    predictor.predict_proba("sst2", ["a fine film"])

Names are imported on first use, so ``import elora_ray`` stays light (no torch, no Ray).
"""

from __future__ import annotations

import logging as _logging
from importlib import import_module as _import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# bitsandbytes logs a warning on import when the optional hub "kernels" package is absent; we
# do not use those kernels (and never reach a hub), so keep it out of users' logs.
_logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)

_EXPORTS = {
    "load_config": "elora_ray.config",
    "dump_config": "elora_ray.config",
    "RunConfig": "elora_ray.config",
    "ConfigError": "elora_ray.errors",
    "EloraError": "elora_ray.errors",
    "run": "elora_ray.api",
    "run_stage": "elora_ray.pipeline",
    "run_stages": "elora_ray.pipeline",
    "run_pipeline": "elora_ray.pipeline",
    "STAGES": "elora_ray.stages",
    "PIPELINE": "elora_ray.stages",
    "Stage": "elora_ray.stages",
    "RunLayout": "elora_ray.layout",
    "read_prepared": "elora_ray.artifacts",
    "read_affinity": "elora_ray.artifacts",
    "read_groups": "elora_ray.artifacts",
    "cluster_tasks": "elora_ray.cluster.select",
    "EnsemblePredictor": "elora_ray.ensemble.predictor",
}
__all__ = [
    "ConfigError",
    "EloraError",
    "EnsemblePredictor",
    "PIPELINE",
    "RunConfig",
    "RunLayout",
    "STAGES",
    "Stage",
    "cluster_tasks",
    "dump_config",
    "load_config",
    "read_affinity",
    "read_groups",
    "read_prepared",
    "run",
    "run_pipeline",
    "run_stage",
    "run_stages",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .api import run
    from .artifacts import read_affinity, read_groups, read_prepared
    from .cluster.select import cluster_tasks
    from .config import RunConfig, dump_config, load_config
    from .ensemble.predictor import EnsemblePredictor
    from .errors import ConfigError, EloraError
    from .layout import RunLayout
    from .pipeline import run_pipeline, run_stage, run_stages
    from .stages import PIPELINE, STAGES, Stage


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(_import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'elora_ray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
