"""Does the sweep's estimate hold on a busy machine? (issue 32's check, by hand)

    python sweeps/eta_under_load.py OUT_DIR WORLD [N_BUSY=4]

Starts ``N_BUSY`` busy-looping processes (4 on 2 cores: two per core), waits 20 s for the load
average to see them, then runs a 4-trial smoke sweep (24 pre-training steps, 4 probe epochs,
one thread) under a pseudo-terminal, so the live table is drawn as a user sees it. Prints every
study ETA the table showed beside the time that was really left, and whether a running trial
had measured its rate yet ("calibrated"). The terminal stream is kept in ``OUT_DIR/pty.txt``.
The run of 2026-12-06 is docs/figures/terminal/eta_under_load.txt.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _busy() -> None:
    while True:
        pass


def _secs(text: str) -> int:
    return sum(
        int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in re.findall(r"(\d+)([hms])", text)
    )


def _sweep_cmd(out: Path, world: str) -> list[str]:
    return [sys.executable, "sweeps/run.py", "--study", "loss_weights", "--preset", "smoke",
            "--n-trials", "4", "--pruner", "none", "--no-report",
            "--storage", f"sqlite:///{out}/o.db", "--tracking-uri", f"sqlite:///{out}/m.db",
            "--set", f"data.dataroot={world}", f"tracking.output_dir={out}/runs",
            "train.max_steps=24", "train.checkpoint_every=8", "downstream.probe_epochs=4"]  # fmt: skip


def _read_pty(cmd: list[str]) -> tuple[list[tuple[float, str]], float, int]:
    """(timestamped output chunks, seconds to the end, return code) of ``cmd`` on a pty."""
    master, slave = pty.openpty()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160", "LINES": "40"}
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append((time.time() - t0, data.decode("utf-8", "replace")))
    proc.wait()
    return chunks, time.time() - t0, proc.returncode


def main() -> None:
    out, world = Path(sys.argv[1]), sys.argv[2]
    n_busy = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    out.mkdir(parents=True, exist_ok=True)
    busy = [mp.Process(target=_busy, daemon=True) for _ in range(n_busy)]
    for p in busy:
        p.start()
    time.sleep(20)
    try:
        chunks, end, rc = _read_pty(_sweep_cmd(out, world))
    finally:
        for p in busy:
            p.terminate()
    seen, calibrated = [], False
    with open(out / "pty.txt", "w") as fh:
        for t, chunk in chunks:
            text = ANSI.sub("", chunk)
            fh.write(f"@{t:.1f}\n{text}\n")
            calibrated = calibrated or bool(re.search(r"s/step|step/s", text))
            seen += [(t, _secs(m.group(1)), calibrated)
                     for m in re.finditer(r"study ETA ((?:\d+[hms])+)", text)]  # fmt: skip
    print(f"rc {rc}; sweep {end:.1f} s; {n_busy} busy processes on {os.cpu_count()} cores")
    last = None
    for t, eta, cal in seen:
        if (eta, cal) != last:
            left = end - t
            print(f"t={t:6.1f} s  study ETA {eta:4d} s  real left {left:6.1f} s  "
                  f"ratio {eta / left:.2f}  {'calibrated' if cal else 'preset'}")  # fmt: skip
            last = (eta, cal)


if __name__ == "__main__":
    main()
