"""What the data check found in each LiDAR file, kept while the file's size and mtime hold.

The pre-flight check (``cmcr.data.check``) reads every LiDAR file a run will read: about 20 GB
before a full nuScenes run, on every start and every resume. A file that passed keeps an entry
``[size, mtime_ns, points]`` under its absolute path in
``<tracking.output_dir>/.data_check/lidar.json``; the next start re-reads only the files whose
size or modification time changed (git's index makes the same bet: a rewrite that keeps both
is not seen). Only passes are kept: a bad file stops the run and is read again next time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from cmcr.guard import no_links

CACHE_DIR = ".data_check"
CACHE_FILE = "lidar.json"


class LidarCheckCache:
    """Results of a per-file check (a point count), valid while ``(size, mtime_ns)`` hold."""

    def __init__(self, output_dir: str | Path) -> None:
        self.root = Path(output_dir)
        self.path = self.root / CACHE_DIR / CACHE_FILE
        self.entries: dict[str, list[int]] = _load(self.path)
        self.changed = False
        self.reads = 0  # files this cache let through to ``check`` (the others: no read)

    def points(self, file: str, check: Callable[[str], int]) -> int:
        """``check(file)`` (the file's point count, or it raises), or the count it gave when
        the file last passed with the same size and mtime."""
        key = os.path.abspath(file)
        try:
            stat = os.stat(key)
        except OSError:
            return check(file)  # missing or unreadable: the check says so in its own words
        stamp = [stat.st_size, stat.st_mtime_ns]
        hit = self.entries.get(key)
        if hit is not None and hit[:2] == stamp:
            return hit[2]
        self.reads += 1
        n = check(file)
        self.entries[key], self.changed = [*stamp, int(n)], True
        return n

    def save(self) -> None:
        """Write the entries if any changed (atomically; never through a link)."""
        if not self.changed:
            return
        # entries of files gone (a deleted world, a test's temporary one) are dropped
        self.entries = {k: v for k, v in self.entries.items() if os.path.exists(k)}
        try:
            folder = no_links(self.root, self.path.parent)
            folder.mkdir(parents=True, exist_ok=True)
            tmp = no_links(self.root, folder / f".{CACHE_FILE}.{os.getpid()}")
            tmp.write_text(json.dumps(self.entries))
            os.replace(tmp, no_links(self.root, self.path))
        except OSError:
            return  # a read-only output folder: the next start checks every file again
        self.changed = False


def _load(path: Path) -> dict[str, list[int]]:
    """The entries of a cache file; none when absent or not a cache (it is only a shortcut)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        k: v
        for k, v in data.items()
        if isinstance(v, list) and len(v) == 3 and all(type(x) is int for x in v)
    }
