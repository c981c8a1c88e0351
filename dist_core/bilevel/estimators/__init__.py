"""Hypergradient estimators, one file each, behind one registry."""

from . import implicit_cg, implicit_neumann, penalty, unrolled  # noqa: F401  (registers them)
from .base import Estimate, UnknownEstimatorError, get, make_options, names

__all__ = ["Estimate", "UnknownEstimatorError", "get", "make_options", "names"]
