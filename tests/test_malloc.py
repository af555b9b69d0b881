"""glibc keeps freed memory for reuse once a process loads data: a decode page-faults no more."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cmcr.adapters.malloc import keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]

# decode one 1600×900 JPEG ten times; the minor page faults per decode
_DECODES = """
import json, resource, sys
import cv2, numpy as np
if sys.argv[1] == "loader":
    from cmcr.configs import load_config
    from cmcr.data.loader import _loader
    cfg = load_config("smoke")
    cfg.data.num_workers = 0
    _loader([], cfg, batch_size=1, shuffle=False, seed=0, collate=list)
rng = np.random.default_rng(0)
buf = cv2.imencode(".jpg", (rng.random((900, 1600, 3)) * 255).astype(np.uint8))[1]
cv2.imdecode(buf, cv2.IMREAD_COLOR)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    cv2.imdecode(buf, cv2.IMREAD_COLOR)
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10))
"""


def _faults_per_decode(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _DECODES, mode], capture_output=True, text=True, cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_process_that_builds_a_loader_decodes_without_page_faults() -> None:
    if not keep_freed_memory():
        pytest.skip("not glibc: the allocator is left as it is (cmcr/adapters/malloc.py)")
    plain, loading = _faults_per_decode("plain"), _faults_per_decode("loader")
    # glibc's default maps and unmaps each 4.3 MB image (1055 pages): the adapter's premise
    assert plain > 1000, plain
    assert loading < 200, loading
