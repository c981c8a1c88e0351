"""The project's one exception hierarchy.

    DistCoreError                  the CLI prints str(e) as one line
    ├── SpecError                  a job file or --set override that does not validate (exit 2)
    ├── ConfigError (ValueError)   a setting the code refuses: unknown estimator, impossible device
    │   ├── UnknownEstimatorError
    │   └── DeviceConfigError
    ├── RunError                   a run that started and failed (exit 1)
    │   ├── BilevelRunError        a bilevel run gave up (restarts exhausted)
    │   ├── ActorFailure           an actor process died (recoverable from a checkpoint)
    │   └── LearnerError           user or library code raised inside an actor; carries its traceback
    ├── TransitionError            a coordinator asked for a transition its state machine forbids
    └── ClusterError               Ray could not be started, joined, or reached through the Jobs API
"""

from __future__ import annotations


class DistCoreError(Exception):
    """Base class; the CLI prints ``str(e)`` as one line."""


class SpecError(DistCoreError):
    """A job file (or ``--set`` override) that does not validate: ``file:line: field: reason``."""

    def __init__(self, file: str, line: int, field: str, reason: str):
        self.file, self.line, self.field, self.reason = file, line, field, reason
        super().__init__(f"{file}:{line}: {field}: {reason}")

    def __reduce__(self):  # crosses process boundaries (Ray pickles errors raised in trials)
        return (SpecError, (self.file, self.line, self.field, self.reason))


class ConfigError(DistCoreError, ValueError):
    """A setting that cannot work, found by the code that would use it (not by a job file's schema)."""


class UnknownEstimatorError(ConfigError):
    """A hypergradient estimator name that is not registered; the message lists the valid ones."""


class DeviceConfigError(ConfigError):
    """A device parameter that cannot describe a real device (e.g. w_min ≥ w_max)."""


class RunError(DistCoreError):
    """A run that started and failed; details are in the run directory's log."""


class BilevelRunError(RunError, RuntimeError):
    """A bilevel solve that could not recover (a learner died more often than ``max_restarts``)."""


class ActorFailure(RunError, RuntimeError):
    """An actor process died (recoverable by restoring from a checkpoint)."""


class LearnerError(RunError, RuntimeError):
    """User or library code raised inside a learner (not recoverable); carries the traceback."""

    def __init__(self, message: str, traceback_text: str):
        super().__init__(message)
        self.traceback_text = traceback_text

    def __reduce__(self):
        return (LearnerError, (str(self), self.traceback_text))


class TransitionError(DistCoreError, RuntimeError):
    """An event that the state machine's table does not allow in the current phase."""


class ClusterError(DistCoreError):
    """Ray could not be started, joined, or reached through the Jobs API."""
