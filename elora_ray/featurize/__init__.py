"""Stage 1 — featurize: JL-projected per-sample gradients of h(s, y) at θ* (Ray Data)."""

from .gradients import PerSampleGradients, gold_log_odds, gradient_layers
from .projection import JLProjector
from .stage import featurize
from .store import TaskFeatures, read_features, read_manifest

__all__ = [
    "JLProjector", "PerSampleGradients", "TaskFeatures", "featurize", "gold_log_odds", "gradient_layers",
    "read_features", "read_manifest",
]
