"""Error types raised by ndtracker.

Configuration mistakes raise the built-in ``ValueError`` / ``TypeError`` at construction; the types
here are for problems with run directories and their logs.
"""

from __future__ import annotations


class NdtrackerError(Exception):
    """Base class of every ndtracker-specific error."""


class RunNotFoundError(NdtrackerError, FileNotFoundError):
    """A path does not exist or holds no ndtracker run."""


class SchemaError(NdtrackerError):
    """A log was written with a schema this version cannot read (for example a newer one)."""
