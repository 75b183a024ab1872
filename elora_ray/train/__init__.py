"""Training adapters: the plain loop (used by fidelity checks and Ray Train workers)."""

from .loop import TrainStats, fit_adapter
from .predict import evaluate_examples

__all__ = ["TrainStats", "evaluate_examples", "fit_adapter"]
