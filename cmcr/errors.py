"""Errors that reach the user as one clear line (the CLI prints them and exits with code 2)."""

from __future__ import annotations


class CMCRError(Exception):
    """Base of every user-facing error; the message names the field, file or value at fault."""


class DataError(CMCRError):
    """A dataset file, split or record is missing or malformed."""


class CheckpointError(CMCRError):
    """A checkpoint or weight file is missing, corrupt or incompatible."""


class TrackingError(CMCRError):
    """An MLflow run, experiment or store cannot be used as asked."""


class ConfigError(CMCRError, ValueError):
    """A config key, value or file is wrong; the message names which and what was expected."""


class StudyError(CMCRError, ValueError):
    """A study name, file or search space is wrong; the message names which and why."""
