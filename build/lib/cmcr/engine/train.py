"""The Accelerate pre-training loop: prepare, step, log, checkpoint, resume.

Reproducibility on resume. Three things decide what step ``s`` computes, and each is restored
exactly from a checkpoint:
- the data: the sampler order is a function of (seed, epoch) (Accelerate's seedable sampler,
  ``set_epoch``), the augmentation of sample ``i`` a function of (seed, epoch, i) (datasets),
  and ``skip_first_batches`` drops the micro-batches the partial epoch already used;
- the weights, optimiser, scheduler and loop counters (``save_state`` + ``TrainState``);
- the model's own randomness (match sampling, codebook restarts): the global torch generator
  is re-seeded before every micro-batch from (seed, epoch, batch, rank), so it does not matter
  how much randomness the data loader iterator or anything else consumed before.

Metric logging on resume: see ``cmcr.tracking.runs`` (each step exactly once; steps already
in the run's history are not logged again).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from cmcr import progress
from cmcr.adapters.accelerate_state import reset_accelerate_state
from cmcr.configs import Config
from cmcr.data import set_loader_epoch
from cmcr.engine import stop
from cmcr.engine.checkpoint import TrainState, save_checkpoint
from cmcr.engine.evaluate import to_device
from cmcr.errors import CMCRError
from cmcr.losses import weighted_total
from cmcr.names import Metric
from cmcr.tracking.runs import RunLogger


class TrainingDiverged(CMCRError):
    """The loss became NaN or infinite; the run stops before the bad step is applied."""


def make_accelerator(cfg: Config, project_dir: str) -> Any:
    """An Accelerator with automatic checkpoint naming under ``project_dir``."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    project = ProjectConfiguration(
        project_dir=project_dir,
        automatic_checkpoint_naming=True,
        total_limit=cfg.train.keep_checkpoints,
    )
    return Accelerator(
        gradient_accumulation_steps=cfg.train.grad_accum,
        mixed_precision=cfg.train.mixed_precision,  # resolved by resolve_config
        project_config=project,
        # the shuffle order then depends on (data_seed, epoch) only, identically on every rank
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=cfg.train.seed
        ),
        # our scheduler counts optimiser steps, not samples over all processes
        step_scheduler_with_optimizer=False,
        # ablations switch heads off; their parameters get no gradient
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def sync_batchnorm(cfg: Config, model: nn.Module, num_processes: int, device: Any) -> nn.Module:
    """The model with its BatchNorms synchronised across processes (train.sync_bn), as the
    release converts both its models when it runs on several GPUs (pretrain.py:42-44).

    Only with several processes on CUDA: one process has nothing to synchronise, and torch's
    SyncBatchNorm does not run on CPU (a multi-process CPU run keeps per-process BatchNorm).
    """
    if not cfg.train.sync_bn or num_processes <= 1 or torch.device(device).type != "cuda":
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def release_accelerator() -> None:
    """Forget the process-wide Accelerate state so the next run may use other settings."""
    reset_accelerate_state()


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters with lr and weight decay from the config."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based): linear warmup, then cosine/constant."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, total: int) -> Any:
    """LambdaLR stepping once per optimiser step."""
    t = cfg.train
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, t.warmup_steps, t.scheduler)
    )


def total_steps(cfg: Config, batches_per_epoch: int) -> int:
    """Optimiser steps of the run: ``train.max_steps`` if set, else epochs × steps per epoch."""
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    return cfg.train.epochs * math.ceil(batches_per_epoch / cfg.train.grad_accum)


def micro_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """The torch seed for one micro-batch: a function of where it is, not of history."""
    return int(np.random.SeedSequence([seed, epoch, batch, rank]).generate_state(1)[0])


class _Window:
    """Loss and stat sums over the micro-batches of one logging window."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.samples = 0
        self.t0 = time.perf_counter()

    def add(self, values: dict[str, float], samples: int) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        self.samples += samples


def _epoch_batches(loader: Any, accelerator: Any, state: TrainState) -> Iterable[Any]:
    """The rest of the current epoch: Accelerate skips the micro-batches already used."""
    loader.set_epoch(state.epoch)  # sampler order and dataset augmentation of this epoch
    if state.batch_in_epoch == 0:
        return loader
    return accelerator.skip_first_batches(loader, state.batch_in_epoch)


def _forward(
    cfg: Config, model: Any, batch: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted total loss and the values to log (unweighted terms, codebook stats)."""
    out = model(batch)
    loss = weighted_total(out["losses"], cfg.loss.weights)
    values = {f"loss_{k}": float(v.detach()) for k, v in out["losses"].items()}
    for key in ("codebook_perplexity", "codebook_usage"):
        if key in out.get("stats", {}):
            values[key] = float(out["stats"][key])
    return loss, values


def _check_finite(accelerator: Any, loss: torch.Tensor, state: TrainState) -> float:
    """All ranks agree whether the loss is finite (one all-reduce); raise before backward."""
    total = accelerator.reduce(loss.detach().float().reshape(1), reduction="mean")
    value = float(total)  # a device sync point, once per micro-batch
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"loss is {value} at optimiser step {state.step + 1} (epoch {state.epoch}, "
            f"batch {state.batch_in_epoch}); lower train.lr or check the loss weights"
        )
    return value


def train_step(
    cfg: Config,
    accelerator: Any,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    batch: Any,
    state: TrainState,
) -> dict[str, float]:
    """One micro-batch: forward, finiteness check, backward, and the optimiser step at sync."""
    torch.manual_seed(
        micro_seed(cfg.train.seed, state.epoch, state.batch_in_epoch, accelerator.process_index)
    )
    with accelerator.accumulate(model):
        loss, values = _forward(cfg, model, batch)
        values["loss"] = _check_finite(accelerator, loss, state)
        accelerator.backward(loss)
        if accelerator.sync_gradients and cfg.train.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        values["lr"] = optimizer.param_groups[0]["lr"]  # the lr this step uses
        optimizer.step()
        if accelerator.sync_gradients:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return values


def _log_window(
    accelerator: Any, logger: RunLogger, window: _Window, step: int, *, write: bool
) -> None:
    """Mean of the window over micro-batches and ranks, as ``train/*`` metrics at ``step``."""
    keys = sorted(window.sums)
    means = torch.tensor([window.sums[k] / window.count for k in keys], device=accelerator.device)
    means = accelerator.reduce(means, reduction="mean")  # every rank calls this
    elapsed = max(time.perf_counter() - window.t0, 1e-9)
    metrics = {f"train/{k}": float(v) for k, v in zip(keys, means.tolist(), strict=True)}
    metrics["train/samples_per_s"] = window.samples * accelerator.num_processes / elapsed
    if write:
        logger.log_metrics(metrics, step)


@torch.no_grad()
def validate_holdout(
    cfg: Config, accelerator: Any, model: Any, loader: Any, logger: RunLogger, step: int
) -> None:
    """Mean loss terms over the held-out scenes, logged as ``holdout/*`` at ``step`` (main only).

    The release validates pre-training on its 100 held-out scenes at every epoch's end. Only
    the main process computes it, on the unwrapped model (no DDP collective runs, so the other
    ranks go on and wait at the next step's all-reduce); eval mode: BatchNorm uses its running
    statistics and the codebook does not update. The match sampling is seeded per batch, so
    the figure is the same for the same weights.
    """
    if not accelerator.is_main_process or step <= (
        logger.last_logged_step(Metric.HOLDOUT_LOSS) or 0
    ):
        return
    net = accelerator.unwrap_model(model)
    net.eval()
    sums: dict[str, float] = {}
    n = 0
    set_loader_epoch(loader, 0)
    for batch in loader:
        batch = to_device(batch, accelerator.device)
        out = net(batch)
        values = {k: float(v) for k, v in out["losses"].items()}
        values[""] = float(weighted_total(out["losses"], cfg.loss.weights))
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
    net.train()
    if n:
        metrics = {
            (Metric.HOLDOUT_LOSS if k == "" else Metric.HOLDOUT_LOSS_PREFIX + k): v / n
            for k, v in sums.items()
        }
        logger.log_metrics(metrics, step)


def pretrain_loop(
    cfg: Config,
    accelerator: Any,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    loader: Any,
    state: TrainState,
    logger: RunLogger,
    total: int,
    holdout: Any = None,
    probe: Any = None,
) -> int:
    """Train until ``total`` optimiser steps; returns the last step. Logs and checkpoints.

    ``holdout``: a loader over the held-out scenes, validated at every epoch's end and at the
    end of training (``validate_holdout``); None when the split holds none of them.
    ``probe``: a ``cmcr.engine.probe.RepresentationProbe`` measured every ``sweep.eval_every``
    steps (it may stop the run: pruned, after checkpointing the step).
    """
    t = cfg.train
    # steps already in the history (a resumed run) are re-run but not logged twice
    logged = logger.last_logged_step(Metric.TRAIN_LOSS) or 0
    bar = progress.task(progress.PRETRAIN, total, state.step, enabled=accelerator.is_main_process)
    window = _Window()
    model.train()
    while state.step < total:
        for batch in _epoch_batches(loader, accelerator, state):
            values = train_step(cfg, accelerator, model, optimizer, scheduler, batch, state)
            window.add(values, int(batch["batch_size"]))
            state.batch_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            bar.update(1)
            if state.step % t.log_every == 0 or state.step == total:
                # every rank reduces (a collective); only main knows `logged` and logs
                _log_window(accelerator, logger, window, state.step, write=state.step > logged)
                window = _Window()
            _checkpoint_probe_stop(accelerator, model, state, t.checkpoint_every, total, probe)
            if state.step >= total:
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
            if holdout is not None and state.step < total:
                validate_holdout(cfg, accelerator, model, holdout, logger, state.step)
    if holdout is not None:
        validate_holdout(cfg, accelerator, model, holdout, logger, state.step)
    if probe is not None:
        probe.finish(state.step)
    bar.close()
    _sync_norm_buffers(accelerator, model)
    return state.step


def _checkpoint_probe_stop(
    accelerator: Any, model: Any, state: TrainState, every: int, total: int, probe: Any
) -> None:
    """After an optimiser step: the periodic checkpoint, the probe when due (it may prune the
    run), and a scheduler's stop request (checkpoint, then raise ``stop.Stopped``)."""
    if state.step % every == 0:
        save_checkpoint(accelerator, state)
    if probe is not None and probe.due(state.step):
        probe.step(accelerator, model, state.step, lambda: _save_once(accelerator, state, every))
    if state.step < total and stop.agreed(accelerator):  # a scheduler's warning
        _save_once(accelerator, state, every)
        raise stop.Stopped(state.step, stop.requested())


def _save_once(accelerator: Any, state: TrainState, every: int) -> None:
    """Checkpoint the current step unless the periodic checkpoint just did."""
    if state.step % every:
        save_checkpoint(accelerator, state)


def _sync_norm_buffers(accelerator: Any, model: Any) -> None:
    """Give every rank rank 0's BatchNorm running statistics, as DDP's next forward would.

    Running stats are per-rank (each sees its own data); DDP broadcasts rank 0's at the start
    of each forward, so after the last step they differ. The codebook is NOT synced here: it
    averages its EMA statistics itself, and the distributed test checks that it does.
    """
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    for module in accelerator.unwrap_model(model).modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            for buf in module.buffers():
                dist.broadcast(buf, src=0)
