"""Errors that reach the user as one clear line (the CLI prints them and exits with code 2,
or ``UNAVAILABLE_EXIT`` when what is missing is a service, not the input: ``Unavailable``)."""

from __future__ import annotations


class CMCRError(Exception):
    """Base of every user-facing error; the message names the field, file or value at fault."""


class DataError(CMCRError):
    """A dataset file, split or record is missing or malformed."""


class CheckpointError(CMCRError):
    """A checkpoint or weight file is missing, corrupt or incompatible."""


class TrackingError(CMCRError):
    """An MLflow run, experiment or store cannot be used as asked."""


class Unavailable(CMCRError):
    """A service or resource the command needs does not answer now (the tracking server, the
    study database, disk space): not the input's fault; the same command works once it is back."""


UNAVAILABLE_EXIT = 69  # sysexits.h EX_UNAVAILABLE; 2 stays the code of a usage error


class ConfigError(CMCRError, ValueError):
    """A config key, value or file is wrong; the message names which and what was expected."""


class StudyError(CMCRError, ValueError):
    """A study name, file or search space is wrong; the message names which and why."""


def first_line(exc: BaseException, *, empty: str | None = None, limit: int | None = None) -> str:
    """The first line of ``exc``'s message (libraries' messages run over many lines), cut at
    ``limit`` characters; ``empty`` (default: the exception's class name) when it has none."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else (empty or type(exc).__name__)
    return line[:limit] if limit is not None else line
