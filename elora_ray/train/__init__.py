"""Training adapters: the plain loop (used by fidelity checks and Ray Train workers)."""

from .loop import TrainStats, evaluate_examples, fit_adapter

__all__ = ["TrainStats", "evaluate_examples", "fit_adapter"]
