"""The public entry points: ``run_pretrain`` and ``run_trial`` (pre-training + downstream).

Call path: ``run_trial`` → ``_pretrain`` → ``_train`` → ``train.pretrain_loop`` → ``train_step``.

Order of work, so that bad input never leaves a RUNNING MLflow run behind: validate the
config and the dataroot, build the data loader, check the run id to resume; only then create
(or resume) the MLflow run. Anything that fails after that ends the run FAILED with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cmcr import runlog
from cmcr.compat import patch_spconv_cpu
from cmcr.configs import Config, resolve_config
from cmcr.data import build_pretrain_loader, check_downstream_data, check_pretrain_data
from cmcr.data.pretrain import NoHeldOutScenes
from cmcr.engine import train
from cmcr.engine.checkpoint import (
    BACKBONE_FILE,
    TrainState,
    attempt_dir,
    drop_partial_checkpoints,
    has_checkpoints,
    load_latest,
    own_run_dir,
    run_dir,
    save_backbone,
)
from cmcr.engine.downstream import run_downstream as _run_downstream
from cmcr.engine.probe import RepresentationProbe
from cmcr.engine.probe import enabled as probe_enabled
from cmcr.errors import DataError
from cmcr.guard import no_links
from cmcr.models import CMCRModel
from cmcr.names import Metric, Tag
from cmcr.tracking.inputs import config_yaml, run_spec
from cmcr.tracking.runs import RunLogger

log = logging.getLogger("cmcr")


@dataclass
class PretrainResult:
    """What a finished pre-training produced."""

    run_id: str
    backbone_path: Path
    steps: int


def check_dataroot(cfg: Config) -> None:
    """Fail early (before any run exists) when the dataset folder is missing."""
    root = Path(cfg.data.dataroot)
    if not (root / cfg.data.version).is_dir():
        raise DataError(
            f"data.dataroot: '{root}' has no '{cfg.data.version}' table folder "
            "(make a synthetic world with `cmcr synth`, or point data.dataroot at nuScenes)"
        )


def _build_loader(cfg: Config) -> tuple[Any, Any]:
    """(training loader, held-out loader or None); raises DataError on bad data.

    Training leaves data.holdout_scenes out; pre-training validates on those of them the
    data holds (the release's 100 scenes of nuScenes train; of the mini split, scene-1094).
    """
    split, seed = cfg.data.train_split, cfg.train.seed
    train = build_pretrain_loader(cfg, split, shuffle=True, seed=seed, holdout="exclude")
    try:
        holdout = build_pretrain_loader(cfg, split, shuffle=False, seed=seed, holdout="only")
    except NoHeldOutScenes:  # the data holds none of them (e.g. the smoke world)
        holdout = None
    return train, holdout


def process_state() -> Any:
    """Accelerate's process state, initialised for CPU (gloo) when there is no GPU.

    ``PartialState()`` alone ignores ACCELERATE_USE_CPU and, without CUDA, would treat a
    ``torchrun --nproc_per_node 2`` launch as two unrelated single processes.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def _is_main() -> bool:
    return process_state().is_main_process


def _broadcast(value: Any) -> Any:
    """Main process's ``value`` on every process (no-op when not distributed)."""
    from accelerate.utils import broadcast_object_list

    if process_state().num_processes == 1:
        return value
    return broadcast_object_list([value])[0]


def _start_logger(cfg: Config, kind: str, run_id: str | None, **kw: Any) -> RunLogger:
    """Create/resume the run on main; every process learns its id.

    A resumed run's folder is checked first (``own_run_dir``: no symbolic link in it), so a
    refused resume leaves the MLflow run and the file system as they were."""
    if run_id is not None:
        own_run_dir(cfg, run_id)
    is_main = _is_main()
    logger = RunLogger.start(run_spec(cfg, kind=kind, **kw), run_id=run_id) if is_main else None
    rid = _broadcast(logger.run_id if logger else None)
    if is_main:
        log.info(f"cmcr {kind}: run {rid} (outputs in {run_dir(cfg, rid)})")
    return logger or RunLogger(None, rid, "", is_main=False)


def _pretrain_done(logger: RunLogger, cfg: Config) -> bool:
    """A run whose pre-training completed (tag set and backbone.pt present) is not redone."""
    done = False
    if logger.is_main:
        tags = logger.client.get_run(logger.run_id).data.tags
        path = run_dir(cfg, logger.run_id) / BACKBONE_FILE
        done = tags.get(Tag.PRETRAIN_DONE) == "true" and path.is_file()
    return bool(_broadcast(done))


def _pretrain(
    cfg: Config, logger: RunLogger, loaders: Any, *, resume: bool, report: Any = None
) -> int:
    """Pre-train inside an open run (resuming from its checkpoints); returns the steps done.

    A completed pre-training is not redone; ``method.name=random`` saves the seeded init.
    ``report``: the sweep's pruning report, fed by the representation probe (cmcr.engine.probe).
    """
    if resume and _pretrain_done(logger, cfg):
        return int(_broadcast(logger.last_logged_step(Metric.TRAIN_LOSS) or 0))
    logger.log_text(config_yaml(cfg), "config.yaml")
    if cfg.method.name == "random":
        if logger.is_main:
            torch.manual_seed(cfg.train.seed)
            _finish_weights(cfg, logger, CMCRModel(cfg).backbone_state())
        return 0
    return _train(cfg, logger, loaders, resume, report)


def _train(
    cfg: Config, logger: RunLogger, loaders: tuple[Any, Any], resume: bool, report: Any = None
) -> int:
    """Prepare model/optimiser/scheduler/loader with Accelerate, resume if asked, train, save."""
    # a sweep attempt writes into its own folder (cmcr.engine.checkpoint); rank 0 knows which
    project = _broadcast(str(attempt_dir(cfg, logger.run_id)))
    accelerator = train.make_accelerator(cfg, project)
    loader, holdout = loaders
    try:
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = CMCRModel(cfg)
        model = train.sync_batchnorm(cfg, model, accelerator.num_processes, accelerator.device)
        optimizer = train.build_optimizer(cfg, model)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        total = train.total_steps(cfg, len(loader))
        scheduler = accelerator.prepare(train.build_scheduler(cfg, optimizer, total))
        state = TrainState()  # saved as JSON by save_checkpoint, not registered with Accelerate
        if resume:
            drop_partial_checkpoints(accelerator)
            if has_checkpoints(cfg, logger.run_id):
                load_latest(accelerator, state, run_dir(cfg, logger.run_id))
                # the step actually loaded: an unloadable newest checkpoint falls back
                logger.set_tags({Tag.RESUMED_FROM_STEP: str(state.step)})
                log.info(f"cmcr: run {logger.run_id} resumed at step {state.step}")
            else:  # say why a resumed run starts over (issue 32: it restarted without a word)
                log.info(
                    f"cmcr: run {logger.run_id} has no checkpoint yet (the first comes at step "
                    f"{cfg.train.checkpoint_every}): pre-training starts from step 0"
                )
        logger.set_tags({Tag.NUM_PROCESSES: str(accelerator.num_processes)})
        probe = None
        if probe_enabled(cfg):
            main = accelerator.is_main_process
            probe = RepresentationProbe(cfg, logger, report, is_main=main, total=total)
        steps = train.pretrain_loop(
            cfg, accelerator, model, optimizer, scheduler, loader, state, logger, total, holdout,
            probe,
        )  # fmt: skip
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _finish_weights(cfg, logger, accelerator.unwrap_model(model).backbone_state())
        return steps
    finally:
        train.release_accelerator()


def _finish_weights(cfg: Config, logger: RunLogger, state: dict[str, torch.Tensor]) -> Path:
    """Save backbone.pt, log it, and mark pre-training done (main process only)."""
    run = run_dir(cfg, logger.run_id)
    path = save_backbone(state, run / BACKBONE_FILE, run)
    logger.log_artifact(no_links(run, path))
    logger.set_tags({Tag.PRETRAIN_DONE: "true"})
    return path


def _prepare(cfg: Config, *, downstream: bool = False) -> tuple[Config, Any]:
    """Validation and data before any run exists: (the effective config, loaders or None).

    The loaders are ``_build_loader``'s (training, held-out or None); None for random init.

    The effective config resolves machine-dependent values (mixed precision without CUDA), so
    what MLflow records is what runs. ``downstream``: a trial also checks the labelled data.
    """
    patch_spconv_cpu()
    cfg = resolve_config(cfg)
    check_dataroot(cfg)
    check_pretrain_data(cfg)  # every file the run reads, before the run exists
    if downstream or probe_enabled(cfg):
        check_downstream_data(cfg)  # the representation probe reads train-split labels too
    if cfg.method.name == "random":
        return cfg, None
    loaders = _build_loader(cfg)
    if len(loaders[0]) == 0:  # an empty epoch would never reach max_steps
        raise DataError(f"data.train_split '{cfg.data.train_split}': no samples to pre-train on")
    return cfg, loaders


def run_pretrain(
    cfg: Config,
    *,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, Any] | None = None,
) -> PretrainResult:
    """Pre-train in a new run (or resume ``run_id`` from its last checkpoint)."""
    cfg, loaders = _prepare(cfg)
    logger = _start_logger(cfg, "pretrain", run_id, parent=parent_run_id, tags=tags)
    with logger, runlog.attached(logger, run_dir(cfg, logger.run_id)):
        steps = _pretrain(cfg, logger, loaders, resume=run_id is not None)
    return PretrainResult(logger.run_id, run_dir(cfg, logger.run_id) / BACKBONE_FILE, steps)


def run_downstream(cfg: Config, *, pretrained: str | None, **kwargs: Any) -> Any:
    """Probe or fine-tune (``cmcr.engine.downstream.run_downstream``; named here per the contract)."""
    return _run_downstream(cfg, pretrained=pretrained, **kwargs)


def run_trial(
    cfg: Config,
    *,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, Any] | None = None,
    report: Any = None,
) -> Any:
    """Pre-training then the downstream evaluation in ONE run (kind ``trial``); resumable.

    In a multi-process launch every rank pre-trains (data-parallel); the downstream evaluation
    runs on the main process only, and the other processes return None once pre-training ends.
    """
    cfg, loaders = _prepare(cfg, downstream=True)
    logger = _start_logger(cfg, "trial", run_id, parent=parent_run_id, tags=tags)
    # the pruner sees the representation probe during pre-training when it is on, else the
    # downstream epochs (never both: their steps would not be comparable)
    early = report if probe_enabled(cfg) else None
    with logger, runlog.attached(logger, run_dir(cfg, logger.run_id)):
        _pretrain(cfg, logger, loaders, resume=run_id is not None, report=early)
        if not logger.is_main:
            return None
        backbone = run_dir(cfg, logger.run_id) / BACKBONE_FILE
        late = None if early is not None else report
        return run_downstream(
            cfg, pretrained=str(backbone), run_id=logger.run_id, logger=logger, report=late
        )
