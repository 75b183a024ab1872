"""Analyses of trained adapters (paper Section 4): Hessian-trace sharpness."""

from .sharpness import hutchinson_trace

__all__ = ["hutchinson_trace"]
