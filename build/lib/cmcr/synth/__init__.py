"""The synthetic nuScenes-format world: ``generate_world`` and the presets it accepts.

What ``generate_world(out, preset, seed)`` / ``cmcr synth --out DIR`` writes (v1.0-mini layout):
- ``v1.0-mini/*.json``: the 13 nuScenes tables + ``lidarseg.json`` (lidarseg token = lidar
  sample_data token, as in nuScenes-lidarseg); scenes named after the devkit's mini splits;
- ``samples/LIDAR_TOP/*.pcd.bin``: float32 (N, 5) [x, y, z, intensity, ring], lidar frame,
  keyframes only (2 Hz; no intermediate sweeps);
- ``lidarseg/v1.0-mini/<token>_lidarseg.bin``: uint8 raw class (0..31) per point;
- ``samples/CAM_*/*.jpg``: 6 cameras at their own timestamps and ego poses;
- ``synthetic_gt/<camera sample_data token>.png``: raw class per pixel (0 = sky / nothing);
- ``maps/<token>.png``: a placeholder semantic prior (the devkit requires one).
"""

from cmcr.synth.generate import generate_world
from cmcr.synth.spec import PRESETS, WorldSpec, resolve_spec

__all__ = ["PRESETS", "WorldSpec", "generate_world", "resolve_spec"]
