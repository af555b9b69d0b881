"""Checkpoints: Accelerate ``save_state``/``load_state`` with automatic naming, plus backbone.pt.

Layout (docs/architecture.md): ``runs/<run_id>/checkpoints/checkpoint_<i>`` (Accelerate picks
the latest on ``load_state()``; keeps ``train.keep_checkpoints``) and ``runs/<run_id>/backbone.pt``
(the final weights, a plain state dict that loads with ``weights_only=True``).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cmcr.configs import Config
from cmcr.errors import CheckpointError

BACKBONE_FILE = "backbone.pt"
COMPLETE_MARKER = "COMPLETE"


@dataclass
class TrainState:
    """Loop counters saved with every checkpoint (``accelerator.register_for_checkpointing``).

    ``batch_in_epoch`` counts micro-batches already consumed in ``epoch``, so a resumed run
    skips exactly those with ``accelerator.skip_first_batches``; ``saves`` is the number of
    checkpoints written, which Accelerate needs as its next ``checkpoint_<i>`` index.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    saves: int = 0

    def state_dict(self) -> dict[str, int]:
        """Plain ints, so the pickle holds nothing but numbers."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the counters of a checkpoint."""
        for key, value in state.items():
            setattr(self, key, int(value))


def run_dir(cfg: Config, run_id: str) -> Path:
    """``<tracking.output_dir>/<run_id>``: checkpoints and weights of one run."""
    return Path(cfg.tracking.output_dir) / run_id


def checkpoint_dir(cfg: Config, run_id: str) -> Path:
    """Where Accelerate's automatic naming writes ``checkpoint_<i>`` folders."""
    return run_dir(cfg, run_id) / "checkpoints"


def has_checkpoints(cfg: Config, run_id: str) -> bool:
    """Whether the run has at least one saved state to resume from."""
    folder = checkpoint_dir(cfg, run_id)
    return folder.is_dir() and any(
        (p / COMPLETE_MARKER).exists() for p in folder.glob("checkpoint_*")
    )


def save_checkpoint(accelerator: Any, state: TrainState) -> Path:
    """Every process calls this: Accelerate writes each rank's RNG state, main the rest.

    A ``COMPLETE`` marker is written once every rank has finished, so a run killed in the
    middle of a save leaves a folder that ``drop_partial_checkpoints`` recognises.
    """
    state.saves += 1  # counted before saving so the saved counter names the next index
    where = Path(accelerator.save_state())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (where / COMPLETE_MARKER).touch()
    return where


def drop_partial_checkpoints(accelerator: Any) -> list[Path]:
    """Delete checkpoint folders without the ``COMPLETE`` marker (a kill during a save).

    Accelerate's ``load_state()`` takes the highest-numbered folder as it is; a half-written
    one would make the run unresumable, while the previous complete one is still good.
    """
    folder = Path(accelerator.project_dir) / "checkpoints"
    partial = []
    if folder.is_dir():
        partial = [p for p in folder.glob("checkpoint_*") if not (p / COMPLETE_MARKER).exists()]
    accelerator.wait_for_everyone()  # every rank listed before main deletes
    if accelerator.is_main_process:
        for p in partial:
            shutil.rmtree(p)
    accelerator.wait_for_everyone()
    return partial


def load_latest(accelerator: Any, state: TrainState) -> None:
    """Restore the newest checkpoint (Accelerate picks it); a broken one raises CheckpointError."""
    picked = [Path(accelerator.project_dir) / "checkpoints"]
    # Accelerate tells the folder it chose to its pre-hooks; remember it for the message
    hook = accelerator.register_load_state_pre_hook(lambda _models, d: picked.append(Path(d)))
    try:
        accelerator.load_state()
    except Exception as exc:  # torch, safetensors and pickle raise many types for bad files
        detail = str(exc).splitlines()[0] if str(exc) else "no detail"
        raise CheckpointError(
            f"checkpoint '{picked[-1]}' cannot be loaded ({type(exc).__name__}: {detail})"
        ) from exc
    finally:
        hook.remove()
    # Accelerate does not restore its save counter; without this the next save would
    # collide with an existing checkpoint_<i>.
    accelerator.project_configuration.iteration = state.saves


def save_backbone(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Write the backbone state dict atomically (a killed run never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp)
    tmp.replace(path)
    return path


def load_backbone(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``backbone.pt`` with ``weights_only=True``; a missing or bad file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"backbone weights '{path}' do not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"backbone weights '{path}' cannot be loaded: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"backbone weights '{path}': expected a state dict")
    return state
