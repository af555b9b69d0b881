"""Home of the loss terms added with ``@register_loss_term`` (docs/architecture.md, How to extend).

Write a term here as ``@register_loss_term("name")`` on a function of ``TermInputs`` returning an
unweighted scalar, and give it a weight with ``loss.weights.extra.name`` (a preset, ``--set`` or a
study). The model and the config validation import this module, so a term defined here is known
to both; a term defined elsewhere is known once its module has been imported.
"""

from __future__ import annotations

from cmcr.losses.registry import LOSS_TERMS, TermInputs, active_extra_terms, register_loss_term

__all__ = ["LOSS_TERMS", "TermInputs", "active_extra_terms", "register_loss_term"]
