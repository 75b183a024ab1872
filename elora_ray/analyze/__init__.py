"""Analyses of trained adapters (paper Section 4): Hessian-trace sharpness and generalization gap."""

from .generalization import Variant, run_sharpness, variants_for
from .sharpness import hutchinson_trace

__all__ = ["Variant", "hutchinson_trace", "run_sharpness", "variants_for"]
