"""Stage 2 — estimate: linearised subset fine-tuning (Ray tasks) and the task affinity matrix."""

from ..artifacts import read_affinity
from .affinity import Affinity, affinity_matrix
from .stage import estimate, solve_subsets
from .subsets import default_subset_size, sample_subsets
from .surrogate import evaluate, fit_surrogate

__all__ = [
    "Affinity", "affinity_matrix", "default_subset_size", "estimate", "evaluate", "fit_surrogate",
    "read_affinity", "sample_subsets", "solve_subsets",
]
