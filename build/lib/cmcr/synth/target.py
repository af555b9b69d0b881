"""A world's output folder (``--out``): checked before any work, written in a temp dir beside
it, then swapped in with renames so readers never see a half-written world."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from cmcr.errors import CMCRError


def prepare_target(out: Path, overwrite: bool) -> Path:
    """Check --out and make the temp dir beside it; raise CMCRError naming --out if unusable."""
    if not out.parent.is_dir():
        raise CMCRError(f"--out: parent directory {out.parent} does not exist")
    if out.exists() and not out.is_dir():
        raise CMCRError(f"--out: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CMCRError(f"--out: {out} is not empty (pass --overwrite to replace it)")
    try:
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise CMCRError(f"--out: cannot write in {out.parent}: {exc.strerror}") from None


def swap_in(tmp: Path, out: Path) -> None:
    """Replace `out` by `tmp` with renames, so readers never see a half-written world."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / "world")
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
