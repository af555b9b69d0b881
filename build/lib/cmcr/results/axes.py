"""Axes a reader can trust: mIoU in % (stored as fractions), and no mIoU axis narrower than the
seed noise, a share of the value or half a point (issue 32: a smoke report's axis spanned
0.003196-0.003202 and made a 6e-6 gap look large)."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

PERCENT = 100.0  # stored fractions → the % every figure shows
# an mIoU axis spans at least the largest of: NOISE_SPANS seed SDs, MIN_SPAN_SHARE of the value,
# MIN_SPAN_POINTS points; a narrower one turns rounding noise into a slope
NOISE_SPANS, MIN_SPAN_SHARE, MIN_SPAN_POINTS = 4.0, 0.02, 0.5


def percent_y(fig: go.Figure) -> go.Figure:
    """Every trace's y times 100: Optuna's history (values and best line) and slice figures plot
    the objective on y. Drawn from the values rather than with ``target=``, which drops the
    history's best-value line."""
    for trace in fig.data:
        if getattr(trace, "y", None) is not None:
            trace.y = [None if v is None else v * PERCENT for v in trace.y]
    return fig


def sensible_range(values: Any, seed_sd: float = float("nan")) -> list[float] | None:
    """An axis range around ``values`` (mIoU points) at least as wide as the largest of
    NOISE_SPANS seed SDs, MIN_SPAN_SHARE of the largest value and MIN_SPAN_POINTS, never below 0
    when the values are not; None when the values spread wider (plotly's autorange is right)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return None
    lo, hi = float(v.min()), float(v.max())
    need = max(MIN_SPAN_POINTS, MIN_SPAN_SHARE * max(abs(lo), abs(hi)),
               NOISE_SPANS * seed_sd if np.isfinite(seed_sd) else 0.0)  # fmt: skip
    if hi - lo >= need:
        return None
    a = (lo + hi - need) / 2
    if a < 0 <= lo:
        a = 0.0
    return [a, a + need]


def widen_y(
    fig: go.Figure | str, seed_sd: float = float("nan"), axes: tuple[str, ...] = ()
) -> None:
    """Give each y-axis (``axes``: plotly's "y", "y2" ...; all by default) a ``sensible_range``
    of the traces drawn on it."""
    if isinstance(fig, str):
        return
    values: dict[str, list] = {}
    for trace in fig.data:
        axis = getattr(trace, "yaxis", None) or "y"
        if getattr(trace, "y", None) is not None and (not axes or axis in axes):
            values.setdefault(axis, []).extend(trace.y)
    for axis, vals in values.items():
        rng = sensible_range(vals, seed_sd)
        if rng is not None:
            fig.layout["yaxis" + axis[1:]].range = rng


def flat_reason(values: list[float], seed_sd: float) -> str:
    """Why the parallel and contour figures are not drawn when trial ``values`` (fractions) span less than
    ``sensible_range`` allows; '' otherwise."""
    values = [v * PERCENT for v in values if v is not None]
    if len(values) < 2 or sensible_range(values, seed_sd) is None:
        return ""
    return (f"the trial values span {max(values) - min(values):.2g} mIoU points, less than "
            "an axis needs (a few seed SDs, 2 % of the value, 0.5 points): these figures "
            "stretch any span to full height and would draw noise as structure")  # fmt: skip
