"""advkit's own exceptions: one base class, so every entry point can tell a precise, expected
error (bad input, a file that cannot be trusted, a plugin clash) from a bug.

Each message says what is wrong and, where there is one, what to do instead. The CLI prints an
:class:`AdvkitError` as a one-line error (exit code 2 for ``usage`` errors, 1 otherwise);
Python callers catch the specific class (each also derives from the built-in exception it
used to be, e.g. ``ValueError``, so older ``except`` clauses keep working).

This module imports nothing from advkit, so any module (and the zoo) can use it.
"""

from __future__ import annotations

from typing import ClassVar


class AdvkitError(Exception):
    """Base class of advkit's expected errors; the message is meant for the user as it is."""

    #: The CLI reports it as a usage error (the user asked for something invalid), exit code 2.
    usage: ClassVar[bool] = False


class ParameterError(AdvkitError, ValueError):
    """A hyperparameter or argument of the wrong type or outside its declared range."""

    usage = True


class InputValidationError(AdvkitError, ValueError):
    """Inputs, labels, targets or a model output that do not fit the model."""


class ThreatModelError(AdvkitError, ValueError):
    """A threat model that bounds nothing the user asked to bound, or disagrees with the eps reported."""

    usage = True


class OutputFolderError(AdvkitError, FileExistsError):
    """An output folder that holds files advkit did not write there (or a previous run's)."""

    usage = True


class DataLoadError(AdvkitError, ValueError):
    """A data file that is missing, truncated, not what it claims to be, or unsafe to read."""


class WeightsLoadError(AdvkitError, OSError):
    """A weights file that cannot be had, does not match its manifest, or is unsafe to load."""


class ReportError(AdvkitError, ValueError):
    """A report folder whose files are not what advkit writes."""


class ModelLoadError(AdvkitError, RuntimeError):
    """A model that cannot be built or loaded (the message names it and why)."""


class AttackError(AdvkitError, RuntimeError):
    """An attack that refused its problem or failed while running (the message names the attack or the sample)."""


__all__ = [
    "AdvkitError",
    "AttackError",
    "DataLoadError",
    "InputValidationError",
    "ModelLoadError",
    "OutputFolderError",
    "ParameterError",
    "ReportError",
    "ThreatModelError",
    "WeightsLoadError",
]
