"""Pins what cmcr.adapters.accelerate_state relies on in Accelerate's private state reset."""

from __future__ import annotations

import pytest

from cmcr.adapters.accelerate_state import reset_accelerate_state


@pytest.fixture
def clean_state():
    """Start and end with no Accelerator state, whatever other tests left."""
    reset_accelerate_state()
    yield
    reset_accelerate_state()


def test_second_accelerator_with_other_settings_after_reset(clean_state) -> None:
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState, GradientState

    first = Accelerator(cpu=True, mixed_precision="no", gradient_accumulation_steps=2)
    assert first.gradient_accumulation_steps == 2
    # without the reset, the process-wide state refuses other settings: why the adapter exists
    with pytest.raises(ValueError):
        Accelerator(cpu=True, mixed_precision="bf16", gradient_accumulation_steps=3)
    reset_accelerate_state()

    second = Accelerator(cpu=True, mixed_precision="bf16", gradient_accumulation_steps=3)
    assert second.mixed_precision == "bf16"
    assert second.gradient_accumulation_steps == 3
    assert GradientState().num_steps == 3
    assert AcceleratorState().mixed_precision == "bf16"
    # the process group (PartialState) survives the reset: the next trial reuses it
    assert PartialState().initialized and PartialState().process_index == 0
