"""Task clustering (EnsembleLoRA appendix A.1): SDP relaxation of average-density clustering, rounding,
choice of the number of groups, a spectral fallback for many tasks, and an affinity heatmap."""

from __future__ import annotations

from .objective import average_density, labels_to_groups, partition_matrix, trace_objective
from .plot import plot_affinity
from .rounding import local_search, round_fixed_m, round_trace, spectral_partition, threshold_components
from .sdp import SDPSolveError, solve_sdp
from .select import DEFAULT_MAX_SDP_TASKS, ClusterResult, cluster_tasks

__all__ = [
    "DEFAULT_MAX_SDP_TASKS",
    "ClusterResult",
    "SDPSolveError",
    "average_density",
    "cluster_tasks",
    "labels_to_groups",
    "local_search",
    "partition_matrix",
    "plot_affinity",
    "round_fixed_m",
    "round_trace",
    "solve_sdp",
    "spectral_partition",
    "threshold_components",
    "trace_objective",
]
