"""The downstream datasets: one module each, registering a ``DownstreamDataset`` in
``cmcr.registry.DATASETS`` (docs/architecture.md, How to extend: a downstream dataset).

Code that depends on the dataset asks the registry (``DATASETS.get(cfg.downstream.dataset)``),
never ``if dataset == "..."``; an unknown name is an error listing the registered ones.
"""

from cmcr.datasets.spec import DownstreamDataset, cartesian_voxels, register_dataset, spec_of
from cmcr.registry import DATASETS

__all__ = ["DATASETS", "DownstreamDataset", "cartesian_voxels", "register_dataset", "spec_of"]
