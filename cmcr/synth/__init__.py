"""The synthetic nuScenes-format world: ``generate_world`` and the presets it accepts."""

from cmcr.synth.generate import generate_world
from cmcr.synth.spec import PRESETS, WorldSpec, resolve_spec

__all__ = ["PRESETS", "WorldSpec", "generate_world", "resolve_spec"]
