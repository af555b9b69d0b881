"""What a user names never escapes: study and run names are identifiers, output folders are
checked before anything is written into them.

A name (``--name``, a study YAML's ``name:``, ``--study`` of a report) becomes a folder
(``runs/slurm/<name>``, ``reports/<name>``), an MLflow experiment and filter value, an Optuna
study and part of a SLURM job name: ``check_name`` is the one rule for all of them, applied
before any store, run or file exists. The apostrophe stays allowed: studies named ``it's`` ran
before this rule (MLflow filters quote it through ``cmcr.tracking.store.search_value``, and the
generated scripts quote every value), and it is harmless in a path.

An output folder (``dashboards/build.py --out``) is written into only when it is new, empty, or
holds the marker file this project writes there (``OUT_MARKER``); anything else needs
``--overwrite``, and a filesystem root or a system folder is refused even then.

A run folder (``<tracking.output_dir>/<run id>``) is ours: nothing is written, deleted or
uploaded through a symbolic link in it (``no_links`` at each such place, ``check_run_folder``
on the whole folder before a resume touches its MLflow run), so a planted ``run.log`` link to
``~/.pgpass`` is never appended to nor uploaded, and a linked ``checkpoints`` folder never
loses a ``checkpoint_<i>`` elsewhere.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import IO

from cmcr.errors import CMCRError

NAME_MAX = 100  # an MLflow experiment, an Optuna study, a folder and a SLURM job name
NAME_RULE = f"1 to {NAME_MAX} characters of A-Z a-z 0-9 _ . - ', starting with a letter or digit"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.'-]*")
# C0 controls and DEL: a newline in a path or value would end a script's line and start another
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
OUT_MARKER = ".cmcr-report"  # written into every folder a report was built in
SYSTEM_DIRS = frozenset(
    Path(p)
    for p in ("/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc",
              "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var")
)  # fmt: skip


def shown(value: object, limit: int = 40) -> str:
    """``value`` for a one-line error: repr (newlines escaped), cut at ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(str(value))} characters)"


def check_name(value: object, field: str) -> str:
    """``value`` if it is a valid study/run name, else CMCRError naming ``field``."""
    ok = isinstance(value, str) and len(value) <= NAME_MAX and _NAME.fullmatch(value)
    if not ok:
        raise CMCRError(f"{field} {shown(value)}: expected a name: {NAME_RULE}")
    return value  # type: ignore[return-value]


def path_slug(name: str) -> str:
    """A folder name for ``name`` (a study or an MLflow experiment): never '', '.', '..' nor
    hidden; other characters than A-Z a-z 0-9 _ . - become _."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    slug = re.sub(r"^\.", "_", slug)
    return slug or "_"


def check_out_dir(out: Path, flag: str, overwrite: bool) -> Path:
    """``out`` resolved, if a report may be written there; CMCRError naming ``flag`` if not."""
    resolved = out.expanduser().resolve()
    if resolved == Path(resolved.anchor) or resolved in SYSTEM_DIRS or resolved == Path.home():
        raise CMCRError(f"{flag} {out}: a filesystem root, home or system folder; expected a "
                        "folder of its own for the report")  # fmt: skip
    if resolved.exists() and not resolved.is_dir():
        raise CMCRError(f"{flag} {out}: exists and is not a folder")
    ours = (resolved / OUT_MARKER).is_file()
    if resolved.is_dir() and not ours and not overwrite and any(resolved.iterdir()):
        raise CMCRError(f"{flag} {out}: a non-empty folder this tool did not make; expected "
                            "a new or empty folder (or pass --overwrite)")  # fmt: skip
    return resolved


class RunFolderError(CMCRError):
    """A run folder, or a path in it, is a symbolic link or lies outside the run folder."""


_NO_LINKS = "cmcr never writes, deletes or uploads through a link in a run folder"


def shown_path(path: Path | str) -> str:
    """``path`` for a one-line message, control characters escaped (a planted name may hold a
    newline)."""
    return CONTROL.sub(lambda m: repr(m.group())[1:-1], str(path))


def no_links(root: Path | str, path: Path | str | None = None) -> Path:
    """``path`` (default ``root``) if it lies inside the run folder ``root`` and neither
    ``root`` nor any existing component from it down to ``path`` is a symbolic link; else
    RunFolderError naming the path. Checked before anything there is written, deleted or
    uploaded."""
    root = Path(root)
    target = root if path is None else Path(path)
    base = os.path.normpath(os.path.abspath(root))
    rel = os.path.relpath(os.path.normpath(os.path.abspath(target)), base)
    outside = f"'{shown_path(target)}' is outside the run folder '{shown_path(root)}'"
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise RunFolderError(f"{outside}; expected a path inside it")
    if root.is_symlink():
        raise RunFolderError(
            f"run folder '{shown_path(root)}' is a symbolic link; expected a folder of its own "
            f"({_NO_LINKS})"
        )
    here = root
    for part in [] if rel == os.curdir else Path(rel).parts:
        here = here / part
        if here.is_symlink():
            raise link_error(here, root)
    # what the links check leaves: the resolved path too must stay inside the resolved folder
    if not (root / rel).resolve().is_relative_to(root.resolve()):
        raise RunFolderError(f"{outside} once resolved; expected a path inside it")
    return target


def link_error(link: Path, root: Path | None = None) -> RunFolderError:
    """The one-line refusal of a symbolic link (inside the run folder ``root``)."""
    where = f" in run folder '{shown_path(root)}'" if root is not None else ""
    return RunFolderError(
        f"'{shown_path(link)}'{where} is a symbolic link; expected a plain file or folder "
        f"({_NO_LINKS})"
    )


def check_run_folder(root: Path | str) -> Path:
    """``root`` if neither it nor anything inside it is a symbolic link (a missing folder is
    fine: nothing to follow); else RunFolderError. A resume calls it before it touches the run."""
    root = no_links(root)
    for here, dirs, files in os.walk(root):  # a linked folder is listed, never entered
        for name in sorted(dirs + files):
            if os.path.islink(os.path.join(here, name)):
                raise link_error(Path(here, name), root)
    return root


def open_nofollow(path: Path, mode: str = "w") -> IO:
    """``path`` opened for writing (``mode`` ``"a"``, ``"w"`` or ``"wb"``) never through a link:
    a symbolic link (``O_NOFOLLOW``), a pipe or device, or a file with another hard link is a
    RunFolderError, and nothing is truncated before that check."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    not_plain = RunFolderError(
        f"'{shown_path(path)}' is a pipe, device or a file with another hard link; expected a "
        "plain file of the run's own"
    )
    try:  # O_NONBLOCK: opening a planted FIFO fails (ENXIO) instead of waiting for a reader
        fd = os.open(path, flags | (os.O_APPEND if "a" in mode else 0), 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise link_error(Path(path)) from None
        if exc.errno == errno.ENXIO:
            raise not_plain from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        raise not_plain
    if "a" not in mode:
        os.ftruncate(fd, 0)
    return os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8")
