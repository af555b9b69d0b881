"""Forget Accelerate's process-wide state, so one process can run several trainings.

Why a private call: ``AcceleratorState`` and ``GradientState`` are singletons shared by every
``Accelerator`` of the process, and a second ``Accelerator`` with other settings (mixed
precision, gradient accumulation, a different seedable sampler) raises or silently keeps the
first one's. A sweep runs many trials in one process, each with its own settings. Accelerate
has no public reset (its own tests call these ``_reset_state`` methods), so this module is the
only place that does; tests/test_adapters_accelerate.py pins the behaviour.
"""

from __future__ import annotations


def reset_accelerate_state() -> None:
    """Drop the Accelerator and gradient state; keep the process group (PartialState)."""
    from accelerate.state import AcceleratorState, GradientState

    # reset_partial_state=False: torch.distributed stays initialised for the next trial
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
