"""Hypergradient estimators, one file each, behind one registry."""

from . import finite_difference, implicit_cg, implicit_neumann, penalty, sama, unrolled  # noqa: F401  (registers them)
from .base import Estimate, UnknownEstimatorError, get, make_options, names

__all__ = ["Estimate", "UnknownEstimatorError", "get", "make_options", "names"]
