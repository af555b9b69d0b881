"""Test-only launcher: ``cmcr <args>`` with every rank's final model state dumped.

Usage (under torchrun): ``tests/dist_pretrain.py DUMP_DIR pretrain --config ...``. Each rank
writes ``DUMP_DIR/rank<i>.pt`` after the pre-training loop, so tests/test_distributed.py can
check that ranks ended identical without a test switch in production code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from cmcr.cli import main
from cmcr.engine import train

_loop = train.pretrain_loop


def _dumping_loop(cfg, accelerator, model, *args, **kwargs) -> int:
    """The real loop, then this rank's full state dict to the dump folder."""
    steps = _loop(cfg, accelerator, model, *args, **kwargs)
    dump = Path(sys.argv[1])
    dump.mkdir(parents=True, exist_ok=True)
    state = accelerator.unwrap_model(model).state_dict()
    torch.save({k: v.cpu() for k, v in state.items()}, dump / f"rank{accelerator.process_index}.pt")
    return steps


if __name__ == "__main__":
    train.pretrain_loop = _dumping_loop  # the pipeline looks it up on the module at call time
    sys.exit(main(sys.argv[2:]))
