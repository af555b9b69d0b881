"""Checkpoints and weights: the one place that saves, finds and (safely) loads them.

Layout (docs/architecture.md): ``runs/<run_id>/checkpoints/checkpoint_<i>`` written by
Accelerate's ``save_state`` with automatic naming (keeps ``train.keep_checkpoints``), plus our
``train_state.json`` (loop counters), ``rng_state_<rank>.json`` and the ``COMPLETE`` marker;
``runs/<run_id>/backbone.pt`` holds the final weights (a plain state dict).

A sweep attempt (``cmcr.fence``, issue 29) saves into ``runs/<run_id>/attempts/t<trial>/``:
a retry resumes from the newest complete checkpoint of any attempt, and an older attempt that
was paused, not dead, is fenced at its next write; a save it was in the middle of stays in its
own folder, unmarked. The retry's first complete checkpoint removes the older folders.

No pickle (issue 14). Models are safetensors; Accelerate's optimizer/scheduler ``.bin`` files
are read with ``weights_only=True``; our counters and RNG states are JSON. Accelerate writes
its RNG states as ``random_states_<rank>.pkl``; we delete that file right after the save and
keep our own JSON copy, so a checkpoint folder never holds a ``.pkl``, and one that does (a
planted ``custom_checkpoint_0.pkl``) is refused before anything is loaded.

The run folder is ours (``cmcr.guard``, issue 28): before a save, a clean-up or a resume the
whole folder is checked for symbolic links (``check_run_folder``; Accelerate's rotation deletes
whatever ``checkpoints/`` lists), every path written, deleted or uploaded is checked again
(``no_links``) and our files are opened with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from cmcr import fence
from cmcr.configs import Config
from cmcr.engine.disk import check_free, full_disk_named
from cmcr.engine.rng import rng_state, set_rng_state
from cmcr.errors import CheckpointError, TrackingError, first_line
from cmcr.guard import RunFolderError, check_run_folder, no_links, open_nofollow, shown
from cmcr.names import Tag
from cmcr.tracking.store import make_client, resolve_tracking_uri
from cmcr.uris import redact
from cmcr.weights import read_torch_file

BACKBONE_FILE = "backbone.pt"
COMPLETE_MARKER = "COMPLETE"
STATE_FILE = "train_state.json"
PICKLE_SUFFIXES = (".pkl", ".pickle")
_PROGRESS_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
log = logging.getLogger("cmcr")


@dataclass
class TrainState:
    """Loop counters saved as ``train_state.json`` in every checkpoint.

    ``batch_in_epoch`` counts micro-batches already consumed in ``epoch``, so a resumed run
    skips exactly those with ``accelerator.skip_first_batches``; ``saves`` is the number of
    checkpoints written, which Accelerate needs as its next ``checkpoint_<i>`` index.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    saves: int = 0

    def load_json(self, path: Path) -> None:
        """Restore the counters from ``path``; CheckpointError if it is missing or malformed."""
        try:
            data = json.loads(path.read_text())
            values = {f.name: data[f.name] for f in fields(self)}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"'{path}' is not a train state ({type(exc).__name__})") from None
        if not all(type(v) is int and v >= 0 for v in values.values()):
            raise CheckpointError(f"'{path}': counters must be non-negative integers")
        for key, value in values.items():
            setattr(self, key, value)


# ---- where checkpoints are ------------------------------------------------------------------
def run_dir(cfg: Config, run_id: str) -> Path:
    """``<tracking.output_dir>/<run_id>``: checkpoints and weights of one run."""
    return Path(cfg.tracking.output_dir) / run_id


def own_run_dir(cfg: Config, run_id: str) -> Path:
    """``run_dir``, checked before a resume touches the run: ``run_id`` is one folder name and
    neither the folder nor anything in it is a symbolic link (RunFolderError)."""
    if not run_id or run_id in (".", "..") or Path(run_id).name != run_id:
        raise RunFolderError(f"run id {shown(run_id)}: expected one folder name (an MLflow run id)")
    return check_run_folder(run_dir(cfg, run_id))


def checkpoint_dir(cfg: Config, run_id: str) -> Path:
    """Where Accelerate's automatic naming writes ``checkpoint_<i>`` folders (outside a sweep)."""
    return run_dir(cfg, run_id) / "checkpoints"


ATTEMPTS = "attempts"


def attempt_dir(cfg: Config, run_id: str) -> Path:
    """The Accelerate project folder of this process's writes: the run folder, or in a sweep
    the attempt's own ``attempts/t<trial>`` inside it (see the module's docstring)."""
    run, token = run_dir(cfg, run_id), fence.token()
    return run if token is None else run / ATTEMPTS / f"t{token}"


def _attempt_number(project: Path) -> int:
    """The trial number of an ``attempts/t<n>`` folder; -1 for the run folder itself."""
    name = project.name
    return int(name[1:]) if project.parent.name == ATTEMPTS and name[1:].isdigit() else -1


def complete_checkpoints(folder: Path) -> list[Path]:
    """The ``checkpoint_<i>`` folders with a ``COMPLETE`` marker, newest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("checkpoint_*") if p.name[11:].isdigit()]
    found = [p for p in found if (p / COMPLETE_MARKER).exists()]
    return sorted(found, key=lambda p: int(p.name[11:]), reverse=True)


def run_checkpoints(run: Path) -> list[Path]:
    """The complete checkpoints of every attempt of the run in folder ``run``, newest first
    (by index, which continues across attempts; then the later attempt)."""
    projects = [run, *sorted((run / ATTEMPTS).glob("t*"))] if (run / ATTEMPTS).is_dir() else [run]
    found = [p for project in projects for p in complete_checkpoints(project / "checkpoints")]
    return sorted(
        found, key=lambda p: (int(p.name[11:]), _attempt_number(p.parent.parent)), reverse=True
    )


def has_checkpoints(cfg: Config, run_id: str) -> bool:
    """Whether the run has at least one saved state to resume from."""
    return bool(run_checkpoints(run_dir(cfg, run_id)))


def latest_step(cfg: Config, run_id: str) -> int:
    """The optimiser step of the run's newest readable checkpoint (0 when there is none)."""
    for folder in run_checkpoints(run_dir(cfg, run_id)):
        state = TrainState()
        try:
            state.load_json(folder / STATE_FILE)
        except CheckpointError:  # a damaged newest one: the resume would fall back too
            continue
        return state.step
    return 0


# ---- save -----------------------------------------------------------------------------------
def save_checkpoint(accelerator: Any, state: TrainState) -> Path:
    """Every process calls this: Accelerate writes the weights/optimiser, each rank its RNG.

    ``train_state.json`` and the ``COMPLETE`` marker are written by main once every rank has
    finished, so a run killed in the middle of a save leaves a folder without the marker,
    which ``drop_partial_checkpoints`` recognises.
    """
    project = check_run_folder(accelerator.project_dir)  # save_state's rotation deletes
    if accelerator.is_main_process:
        fence.check(f"checkpoint of step {state.step}")
    what = f"the checkpoint of step {state.step}"
    check_free(project, what)  # a full disk is the environment's failure, not the trial's
    state.saves += 1  # counted before saving so the saved counter names the next index
    with full_disk_named(project, what):
        where = no_links(project, accelerator.save_state())
        rank = accelerator.process_index
        (where / f"random_states_{rank}.pkl").unlink(missing_ok=True)  # see the module docstring
        _write_json(where / f"rng_state_{rank}.json", rng_state())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with full_disk_named(project, what):
            _write_json(where / STATE_FILE, asdict(state))
        fence.check(f"checkpoint of step {state.step}")  # paused mid-save: never marked
        open_nofollow(where / COMPLETE_MARKER).close()
        _drop_older_attempts(project)
    return where


def _drop_older_attempts(project: Path) -> None:
    """With a complete checkpoint of its own, an attempt removes the folders of the run's
    earlier attempts (they are fenced: their trials are no longer RUNNING)."""
    mine = _attempt_number(project)
    if mine < 0:
        return
    for other in project.parent.glob("t*"):
        if 0 <= _attempt_number(other) < mine:
            shutil.rmtree(no_links(project.parent, other), ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    with open_nofollow(tmp) as fh:
        fh.write(json.dumps(data))
    tmp.replace(path)  # replaces a link at ``path`` itself, never what it points to


# ---- resume ---------------------------------------------------------------------------------
def drop_partial_checkpoints(accelerator: Any) -> list[Path]:
    """Delete checkpoint folders without the ``COMPLETE`` marker (a kill during a save)."""
    project = check_run_folder(accelerator.project_dir)  # on every rank, before the barrier
    folder = project / "checkpoints"
    partial = []
    if folder.is_dir():
        partial = [p for p in folder.glob("checkpoint_*") if not (p / COMPLETE_MARKER).exists()]
    accelerator.wait_for_everyone()  # every rank listed before main deletes
    if accelerator.is_main_process:
        for p in partial:
            shutil.rmtree(no_links(project, p))
    accelerator.wait_for_everyone()
    return partial


def refuse_pickles(folders: list[Path]) -> None:
    """CheckpointError if any checkpoint folder holds a pickle file (it could run code)."""
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in PICKLE_SUFFIXES:
                raise CheckpointError(
                    f"checkpoint '{folder}' holds the pickle file '{path.name}': refusing to "
                    "resume (our checkpoints hold none; loading one could run arbitrary code)"
                )


def load_latest(accelerator: Any, state: TrainState, run: Path | None = None) -> Path:
    """Restore the newest checkpoint that loads; older ones are tried when a newer one is bad.

    ``run``: the run folder whose attempts are searched (``run_checkpoints``; default the
    project folder). Folders newer than the one used are moved to ``<run>/rejected/`` (their
    index is reused by the next save). CheckpointError when none loads or any holds a pickle.
    """
    project = check_run_folder(run or accelerator.project_dir)  # _reject moves and deletes in it
    folders = run_checkpoints(project)
    refuse_pickles(folders)  # before anything is loaded
    errors = []
    for i, folder in enumerate(folders):
        error = _try_load(accelerator, folder, state)
        if _agree(accelerator, error is None):  # every rank uses the same checkpoint
            _reject(accelerator, project, folders[:i])
            # Accelerate does not restore its save counter; without this the next save would
            # collide with an existing checkpoint_<i>.
            accelerator.project_configuration.iteration = state.saves
            log.info(f"cmcr: resuming from {folder} (step {state.step})")
            return folder
        errors.append(error or f"checkpoint '{folder}' failed to load on another process")
        log.warning(f"cmcr: {errors[-1]}; trying an older checkpoint")
    if not errors:
        raise CheckpointError(f"no complete checkpoint in '{project}'")
    raise CheckpointError(f"no checkpoint can be loaded; newest: {errors[0]}")


def _try_load(accelerator: Any, folder: Path, state: TrainState) -> str | None:
    """Load one checkpoint into the prepared objects; the reason it failed, or None."""
    try:
        state.load_json(folder / STATE_FILE)
        accelerator.load_state(str(folder), load_kwargs={"weights_only": True})
        set_rng_state(folder / f"rng_state_{accelerator.process_index}.json")
    except Exception as exc:  # torch, safetensors and our JSON raise many types for bad files
        detail = first_line(exc, empty="no detail", limit=200)
        return f"checkpoint '{folder}' cannot be loaded ({type(exc).__name__}: {detail})"
    return None


def _agree(accelerator: Any, ok: bool) -> bool:
    """True when ``ok`` on every process (one all-reduce)."""
    failed = torch.tensor([0.0 if ok else 1.0], device=accelerator.device)
    return float(accelerator.reduce(failed, reduction="sum")) == 0.0


def _reject(accelerator: Any, project: Path, bad: list[Path]) -> None:
    """Move unloadable newer checkpoints out of Accelerate's folder (kept for inspection)."""
    if bad and accelerator.is_main_process:
        aside = no_links(project, project / "rejected")
        aside.mkdir(exist_ok=True)
        for folder in bad:
            dest = no_links(project, aside / folder.name)
            shutil.rmtree(dest, ignore_errors=True)
            no_links(project, folder).rename(dest)
            log.warning(f"cmcr: moved unloadable {folder.name} to {aside}")
    accelerator.wait_for_everyone()


# ---- weights --------------------------------------------------------------------------------
def save_backbone(state: dict[str, torch.Tensor], path: Path, run: Path) -> Path:
    """Write a state dict atomically (a killed run never leaves half a file) into the run
    folder ``run``, never through a link (RunFolderError)."""
    fence.check(f"'{path.name}'")  # never over the weights of a run its retry now owns
    no_links(run, path).parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with full_disk_named(run, f"'{path.name}'"), open_nofollow(tmp, "wb") as fh:
        torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, fh)
    tmp.replace(path)  # replaces a link at ``path`` itself, never what it points to
    return path


def load_weights(path: str | Path, what: str = "backbone") -> dict[str, torch.Tensor]:
    """A weight file as a flat state dict of tensors (``cmcr.weights``); CheckpointError if bad."""
    state = read_torch_file(path, what)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} file '{path}': expected a state dict of tensors")
    return state


def load_into(module: torch.nn.Module, path: str | Path, what: str = "backbone") -> None:
    """Load ``path`` into ``module`` strictly; a key or shape mismatch is a CheckpointError."""
    load_strict(module, load_weights(path, what), path, what)


def load_strict(
    module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str
) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(
            f"{what} file '{path}' does not fit this model config ({detail[:300]})"
        ) from None


def resolve_pretrained(cfg: Config, pretrained: str | None) -> tuple[Path | None, str | None]:
    """``none``/None → (None, None); a file → (path, None); else a run id → its backbone.pt."""
    if pretrained is None or str(pretrained).lower() in ("", "none"):
        return None, None
    text = str(pretrained)
    path = Path(text)
    if path.suffix == ".pt" or path.exists():
        if not path.is_file():
            raise CheckpointError(f"--pretrained '{text}': file does not exist")
        return path, None
    local = run_dir(cfg, text) / BACKBONE_FILE
    if local.is_file():
        return local, text
    return _download_backbone(cfg, text), text


def _download_backbone(cfg: Config, run_id: str) -> Path:
    """The ``backbone.pt`` artifact of MLflow run ``run_id`` (TrackingError if no such run)."""
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(cfg)
    client = make_client(uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise TrackingError(
            f"--pretrained '{run_id}': neither a file nor a run id in {redact(uri)}"
        ) from None
    dst = run_dir(cfg, run_id)
    no_links(dst, dst / BACKBONE_FILE)  # the download writes there
    # MLflow draws progress bars on stderr; the CLI's error contract is one line there
    quiet = os.environ.get(_PROGRESS_ENV)
    os.environ[_PROGRESS_ENV] = "false"
    try:
        return Path(client.download_artifacts(run_id, BACKBONE_FILE, str(dst)))
    except (MlflowException, OSError):
        raise CheckpointError(
            f"--pretrained '{run_id}': the run has no backbone.pt "
            f"(not in {dst} nor among its artifacts)"
        ) from None
    finally:
        if quiet is None:
            os.environ.pop(_PROGRESS_ENV, None)
        else:
            os.environ[_PROGRESS_ENV] = quiet


def pretrained_variant(cfg: Config, pretrained: str | None, source_run: str | None) -> str | None:
    """What the evaluated weights are: random for none, else the pre-training run's variant.

    The probe's own config says nothing about how its weights were trained, so without this the
    variant tag of ``--pretrained none`` would read "cmcr".
    """
    if resolve_pretrained(cfg, pretrained) == (None, None):
        return "random"
    if source_run is None:
        return None
    try:
        tags = make_client(resolve_tracking_uri(cfg)).get_run(source_run).data.tags
    except Exception:  # a local runs/<id>/backbone.pt whose run is in another store
        return None
    return tags.get(Tag.VARIANT)


# ---- segmentation weights (probe / fine-tune) -----------------------------------------------
