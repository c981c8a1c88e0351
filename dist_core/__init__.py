"""dist_core: Ray-based distributed training and tuning for nested (bilevel) research.

Public API::

    from dist_core.bilevel import BilevelProblem, hypergradient, solve
    from dist_core import spec, runner
"""

__version__ = "0.1.0"
