"""The project's exception hierarchy: user mistakes vs. failures of a run."""

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


class RunError(DistCoreError):
    """A run that started and failed; details are in the run directory's log."""


class ClusterError(DistCoreError):
    """Ray could not be started, joined, or reached through the Jobs API."""
