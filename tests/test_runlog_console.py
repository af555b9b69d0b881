"""One output owner in direct CLI commands: a log line printed while a tqdm bar is drawn goes
above the bar, never into it (``cmcr pretrain`` showed ``...17.23s/step]probe at step 7``)."""

from __future__ import annotations

import io
import logging
import sys

from tqdm import tqdm

from cmcr.runlog import setup_console


def test_a_log_line_never_lands_inside_a_progress_bar(monkeypatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        setup_console()
        with tqdm(total=4, desc="pre-training", file=sys.stderr, ncols=70, mininterval=0) as bar:
            for step in range(4):
                bar.update(1)
                logging.getLogger("cmcr.test").info(f"probe at step {step}")
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
    text = err.getvalue()
    for step in range(4):
        line = f"probe at step {step}"
        at = text.index(line)
        assert text[at - 1] in "\r\n", repr(text[max(0, at - 40) : at + 20])  # a line of its own
    assert "]probe" not in text and "it/s]p" not in text


def test_torchs_internal_warnings_stay_off_the_terminal_after_torch_resets_its_loggers() -> None:
    from cmcr.runlog import quiet_torch

    torch_logger = logging.getLogger("torch")
    saved = torch_logger.level
    try:
        torch_logger.setLevel(logging.WARNING)  # what importing torch does to its loggers
        fx = logging.getLogger("torch.fx._symbolic_trace")  # `is_fx_tracing will return ...`
        assert fx.isEnabledFor(logging.WARNING)
        quiet_torch()
        assert not fx.isEnabledFor(logging.WARNING) and fx.isEnabledFor(logging.ERROR)
    finally:
        torch_logger.setLevel(saved)
