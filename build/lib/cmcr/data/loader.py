"""Loader builders with a (seed, epoch)-pure sample order, so resumed runs see the same batches."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from cmcr.adapters.malloc import keep_freed_memory
from cmcr.configs import Config
from cmcr.data.collate import collate_pretrain, collate_seg
from cmcr.data.pretrain import PretrainDataset
from cmcr.data.seg import SegDataset


class EpochSampler(Sampler):
    """Yields (epoch, index) pairs; the order is a pure function of (seed, epoch).

    Passing the epoch with each index keeps persistent workers (which hold a stale copy of the
    dataset) on the right random stream without any message to them.
    """

    def __init__(self, n: int, *, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """(n,) indices of this epoch."""
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, int(i)) for i in self.order()])

    def __len__(self) -> int:
        return self.n


def _worker_init(_: int) -> None:
    """One torch / OpenCV / BLAS thread per worker: the workers already run in parallel. Freed
    memory kept for reuse (a spawned worker does not inherit the loading process's setting)."""
    keep_freed_memory()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:  # BLAS threads only fight each other on the small per-sample matmuls
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


def _loader(
    dataset, cfg: Config, *, batch_size: int, shuffle: bool, seed: int, collate, drop_last=False
) -> DataLoader:
    """A DataLoader over an EpochSampler; persistent workers where num_workers > 0.

    ``drop_last`` drops the last, partial batch (the release's training loaders), unless the
    whole set is less than one batch (the small synthetic worlds), which would leave none.
    """
    # the process that loads data keeps freed memory for reuse: every decoded image and sample
    # array is a fresh buffer that page-faults in otherwise (cmcr/adapters/malloc.py)
    keep_freed_memory()
    workers = cfg.data.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed=seed, shuffle=shuffle),
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
        drop_last=drop_last and len(dataset) >= batch_size,
    )


def build_pretrain_loader(
    cfg: Config,
    split: str,
    *,
    shuffle: bool = True,
    seed: int | None = None,
    holdout: str = "exclude",
    drop_last: bool | None = None,
) -> DataLoader:
    """Pre-training batches of a split (batch cfg.train.batch_size); call loader.sampler.set_epoch.

    ``holdout``: "exclude" leaves data.holdout_scenes out (training), "only" keeps just them
    (validation), "all" keeps the whole split (PretrainDataset). ``drop_last`` (default: train.
    drop_last for a training loader, which shuffles; the release's
    `pretrain/lightning_datamodule.py:86`) drops the last, partial batch.
    """
    seed = cfg.train.seed if seed is None else seed
    dataset = PretrainDataset(cfg, split, seed=seed, holdout=holdout)
    drop = cfg.train.drop_last and shuffle if drop_last is None else drop_last
    return _loader(
        dataset, cfg, batch_size=cfg.train.batch_size, shuffle=shuffle, seed=seed,
        collate=collate_pretrain, drop_last=drop,
    )  # fmt: skip


def build_seg_loader(
    cfg: Config,
    split: str,
    *,
    train: bool,
    seed: int | None = None,
    dataset_cls=SegDataset,
    drop_last: bool = False,
) -> DataLoader:
    """Segmentation batches (batch cfg.downstream.batch_size); train shuffles and augments.

    ``dataset_cls``: SegDataset (nuScenes-lidarseg) or cmcr.data.kitti.KittiSegDataset.
    ``drop_last``: drop the last, partial batch (unless it is the only one).
    """
    seed = cfg.train.seed if seed is None else seed
    dataset = dataset_cls(cfg, split, train=train, seed=seed)
    return _loader(
        dataset, cfg, batch_size=cfg.downstream.batch_size, shuffle=train, seed=seed,
        collate=collate_seg, drop_last=drop_last,
    )  # fmt: skip


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch on every EpochSampler the loader wraps and on its dataset.

    Call it before each epoch, also on the loader that Accelerate's skip_first_batches returns:
    Accelerate's DataLoaderShard re-sets its samplers' epoch from its own counter on every
    __iter__, so its set_epoch (which sets that counter) is called too.
    """
    if hasattr(loader, "set_epoch"):  # accelerate.data_loader.DataLoaderShard
        loader.set_epoch(epoch)
    todo, seen = [loader], set()
    while todo:  # walk the sampler / batch_sampler chain
        obj = todo.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, EpochSampler):
            obj.set_epoch(epoch)
        todo += [getattr(obj, name, None) for name in ("sampler", "batch_sampler")]
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
