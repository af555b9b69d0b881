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
"""

from __future__ import annotations

import re
from pathlib import Path

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
