"""Stage — resource plan: every stage's processes, devices and peak memory, before anything loads.

``elora plan --config X`` prints it; ``elora run`` checks it first and writes ``plan.json``.
"""

from .fit import NodeShape, Plan, Problem, build_plan, fmt_bytes, parse_bytes
from .memory import StagePlan
from .shape import ModelShape, model_shape
from .share import federated_client_plan, planned_gpu_share

__all__ = ["ModelShape", "NodeShape", "Plan", "Problem", "StagePlan", "build_plan", "federated_client_plan", "fmt_bytes",
           "model_shape", "parse_bytes", "planned_gpu_share"]
