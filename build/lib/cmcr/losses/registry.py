"""Loss terms added without touching the model: ``@register_loss_term("name")``.

A registered term is a function of ``TermInputs`` (what the forward pass has computed) that
returns an unweighted scalar. ``CMCRModel.forward`` computes it whenever its weight
``loss.weights.extra.<name>`` is > 0, ``weighted_total`` applies that weight, and the trainer
logs it as ``train/loss_<name>`` like every built-in term (docs/architecture.md, How to extend).
A registered term sees the whole batch: ``matches`` holds every loss group's matches together
(the built-in terms are computed per loss group, cmcr/losses/groups.py).
Kept free of model imports so that the config validation can list the names cheaply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch

from cmcr.configs.schema import LossWeights
from cmcr.errors import CMCRError
from cmcr.registry import LOSS_TERMS


@dataclass
class TermInputs:
    """What a loss term may read. Shapes: N points, I images, n sampled unmasked matches, D feat_dim."""

    cfg: Any  # the run's Config
    batch: dict[str, Any]  # the collated batch (docs/architecture.md, Pre-training batch)
    point_shared: torch.Tensor  # (N, D) L2-normalised
    point_specific: torch.Tensor | None  # (N, D); None unless a component needs it
    image_shared: torch.Tensor  # (I, D, H, W) L2-normalised
    matches: torch.Tensor  # (n, 4) [point, image, row, col] of the sampled unmasked pairs
    f_p: torch.Tensor  # (n, D) shared features of the matched points
    f_v: torch.Tensor  # (n, D) shared features of their pixels


LossTerm = Callable[[TermInputs], torch.Tensor]
# LOSS_TERMS (cmcr.registry, home: cmcr.losses.extra): name -> LossTerm
# the built-in terms are the typed weight fields; ``extra`` holds the registered ones
BUILTIN = tuple(f.name for f in fields(LossWeights) if f.name != "extra")


def register_loss_term(name: str) -> Callable[[LossTerm], LossTerm]:
    """Register ``fn(TermInputs) -> scalar`` as loss term ``name`` (weight: loss.weights.extra)."""

    if name in BUILTIN:
        raise CMCRError(f"loss term '{name}' is already defined")
    return LOSS_TERMS.register(name)


def active_extra_terms(cfg: Any) -> dict[str, LossTerm]:
    """The registered terms this config weighs above zero, in registration order."""
    extra = cfg.loss.weights.extra
    return {name: fn for name, fn in LOSS_TERMS.items() if extra.get(name, 0.0) > 0}
