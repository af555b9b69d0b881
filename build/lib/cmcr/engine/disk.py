"""A full disk named as such, whatever the writer says (issue 29).

``torch.save`` on a full disk raises ``RuntimeError: [enforce fail at inline_container.cc:672]
. unexpected pos ...`` (or "file write failed") with no errno, which reads like a bug of the
trial; the sweep would spend the trial's retries on it and fail the slot for good. So a write
of a checkpoint or of weights runs under ``full_disk_named``: when it fails and the target's
filesystem is (nearly) full, the error becomes ``OSError(ENOSPC)``, the environment's failure
(cmcr.sweep.worker.fault_kind: re-queued without spending a retry). ``check_free`` refuses a
write up front when the space left is already below ``LOW_SPACE_BYTES`` (one statvfs call).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

from cmcr.errors import first_line

# below this, a checkpoint of the smallest model no longer fits; a save is not attempted
LOW_SPACE_BYTES = 64 << 20


def free_bytes(folder: Path | str) -> int | None:
    """The bytes free to us on ``folder``'s filesystem (its nearest existing parent); None
    when it cannot be asked."""
    here = Path(folder)
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return shutil.disk_usage(here).free
    except OSError:
        return None


def _full(folder: Path | str) -> bool:
    free = free_bytes(folder)
    return free is not None and free < LOW_SPACE_BYTES


def check_free(folder: Path | str, what: str) -> None:
    """OSError(ENOSPC) before writing ``what`` when ``folder``'s disk is already full."""
    if _full(folder):
        raise OSError(
            errno.ENOSPC,
            f"no space left on device: {free_bytes(folder)} bytes free under '{folder}', "
            f"fewer than the {LOW_SPACE_BYTES >> 20} MiB a {what} needs",
        )


@contextlib.contextmanager
def full_disk_named(folder: Path | str, what: str) -> Iterator[None]:
    """Writing ``what`` into ``folder``: a failure on a (nearly) full disk is re-raised as
    OSError(ENOSPC), its original message kept after the reason."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) or not _full(folder):
            raise
        raise _enospc(folder, what, exc) from exc
    except RuntimeError as exc:  # torch's PyTorchStreamWriter: no errno at all
        if not _full(folder):
            raise
        raise _enospc(folder, what, exc) from exc


def _enospc(folder: Path | str, what: str, exc: BaseException) -> OSError:
    detail = f"{type(exc).__name__}: {first_line(exc, limit=200)}"
    return OSError(errno.ENOSPC, f"no space left on device writing {what} in '{folder}' ({detail})")
