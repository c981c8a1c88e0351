"""Bilevel learners: problems, hypergradient estimators, and upper/lower learners on Ray actors.

    from dist_core.bilevel import BilevelProblem, hypergradient, solve
"""

from . import estimators
from .executors import ActorFailure, LearnerError
from .hypergrad import hypergradient
from .problem import BilevelProblem
from .solve import BilevelRunError, SolveResult, solve

__all__ = [
    "ActorFailure",
    "BilevelProblem",
    "BilevelRunError",
    "LearnerError",
    "SolveResult",
    "estimators",
    "hypergradient",
    "solve",
]
