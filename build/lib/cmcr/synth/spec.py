"""What a synthetic world looks like: sizes per preset, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass, replace

from cmcr.errors import CMCRError

# the devkit's own split lists (nuscenes.utils.splits), in that order
MINI_TRAIN: tuple[str, ...] = (
    "scene-0061",
    "scene-0553",
    "scene-0655",
    "scene-0757",
    "scene-0796",
    "scene-1077",
    "scene-1094",
    "scene-1100",
)
MINI_VAL: tuple[str, ...] = ("scene-0103", "scene-0916")
TEST_VERSION = "v1.0-test"  # the test split's tables: like nuScenes v1.0-test, no labels
N_TEST = 150  # scenes of the devkit's "test" split (nuscenes.utils.splits)


def test_scene_names(n: int) -> tuple[str, ...]:
    """The first ``n`` scene names of the devkit's test split (its own list)."""
    if n == 0:
        return ()
    # lazy: the devkit (matplotlib, cv2) loads only for a world with a test split
    from nuscenes.utils.splits import create_splits_scenes

    return tuple(create_splits_scenes()["test"][:n])


FULL_WIDTH, FULL_HEIGHT = 1600, 900  # nuScenes camera resolution
MIN_WIDTH, MIN_HEIGHT = 96, 64  # smallest image the data pipeline accepts


@dataclass(frozen=True)
class WorldSpec:
    """Sizes of a synthetic world (the sensors themselves are fixed: 32 beams, 6 cameras)."""

    train_scenes: int = 8
    val_scenes: int = 2
    samples_per_scene: int = 6
    image_scale: float = 0.3  # 1600x900 -> 480x270
    n_azimuth: int = 1090  # LiDAR firings per sweep and beam
    lidar_range: float = 70.0  # metres; farther returns are dropped
    seed: int = 0
    test_scenes: int = 0  # scenes of the unlabelled test split (v1.0-test; all: N_TEST)
    test_samples: int = 0  # keyframes per test scene (0: samples_per_scene)

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of every camera image."""
        return round(FULL_WIDTH * self.image_scale), round(FULL_HEIGHT * self.image_scale)

    @property
    def scene_names(self) -> tuple[str, ...]:
        """The mini scene names this world holds, train first."""
        return MINI_TRAIN[: self.train_scenes] + MINI_VAL[: self.val_scenes]


PRESETS: dict[str, WorldSpec] = {
    "default": WorldSpec(),
    "demo": WorldSpec(),
    "smoke": WorldSpec(train_scenes=1, val_scenes=1, samples_per_scene=3, image_scale=0.08),
}


def resolve_spec(
    preset: str = "default",
    *,
    seed: int | str = 0,
    scenes_per_split: str | tuple[int, int] | None = None,
    samples_per_scene: int | str | None = None,
    image_scale: float | str | None = None,
    test_scenes: int | str | None = None,
) -> WorldSpec:
    """A preset with overrides applied; every value is checked and named when wrong."""
    if preset not in PRESETS:
        raise CMCRError(f"--preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    spec = replace(PRESETS[preset], seed=parse_int("--seed", seed, 0, 2**31 - 1))
    if scenes_per_split is not None:
        train, val = _split_counts(scenes_per_split)
        spec = replace(spec, train_scenes=train, val_scenes=val)
    if samples_per_scene is not None:
        spec = replace(
            spec, samples_per_scene=parse_int("--samples-per-scene", samples_per_scene, 2, 200)
        )
    if image_scale is not None:
        spec = replace(spec, image_scale=_float("--image-scale", image_scale, 0.01, 1.0))
    if test_scenes is not None:
        spec = replace(spec, test_scenes=parse_int("--test-scenes", test_scenes, 0, N_TEST))
    width, height = spec.image_size
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        raise CMCRError(
            f"--image-scale: {spec.image_scale} gives {width}x{height} images, "
            f"expected at least {MIN_WIDTH}x{MIN_HEIGHT} (scale >= 0.072)"
        )
    return spec


def _split_counts(value: str | tuple[int, int]) -> tuple[int, int]:
    """'T,V' -> (T, V) with 1..8 mini_train and 1..2 mini_val scenes."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    if len(parts) != 2:
        raise CMCRError(f"--scenes-per-split: expected 'TRAIN,VAL' (e.g. 8,2), got {value!r}")
    train = parse_int("--scenes-per-split (train)", parts[0], 1, len(MINI_TRAIN))
    val = parse_int("--scenes-per-split (val)", parts[1], 1, len(MINI_VAL))
    return train, val


def parse_int(name: str, value: int | str, lo: int, hi: int) -> int:
    """Parse an integer in [lo, hi] or raise naming the argument."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise CMCRError(f"{name}: expected an integer, got {value!r}") from None
    if not lo <= number <= hi:
        raise CMCRError(f"{name}: expected an integer in [{lo}, {hi}], got {number}")
    return number


def _float(name: str, value: float | str, lo: float, hi: float) -> float:
    """Parse a finite float in (lo, hi] or raise naming the argument."""
    try:
        number = float(str(value).strip())
    except ValueError:
        raise CMCRError(f"{name}: expected a number, got {value!r}") from None
    if not lo < number <= hi:  # also rejects nan
        raise CMCRError(f"{name}: expected a number in ({lo}, {hi}], got {value!r}")
    return number
