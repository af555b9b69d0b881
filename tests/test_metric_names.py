"""The in-training representation probe is named rep/* (issue 32: ``probe/miou`` read as the
objective of a probe study); runs logged before the rename are read under the new names."""

from __future__ import annotations

import pandas as pd

from cmcr.names import Metric, current_metric, legacy_metric, objective_name


def test_the_representation_probe_is_apart_from_the_objective() -> None:
    keys = [Metric.PROBE_MIOU, Metric.PROBE_SECONDS, Metric.PROBE_TIME_SHARE,
            Metric.PROBE_RANKME, Metric.PROBE_ALPHA_REQ]  # fmt: skip
    assert all(k.startswith("rep/") for k in keys)
    assert objective_name("probe") == "val/miou (probe)" and objective_name(None) == "val/miou"
    assert not any(k.startswith(("val/", "probe/")) for k in keys)


def test_an_old_runs_probe_keys_read_under_the_new_names() -> None:
    assert current_metric("probe/miou") == "rep/probe_miou"
    assert current_metric("probe/miou_raw") == "rep/probe_miou_raw"
    assert current_metric("probe/rankme") == "rep/rankme"
    assert current_metric("val/miou") == "val/miou"  # untouched
    assert legacy_metric("rep/probe_miou_standardised") == "probe/miou_standardised"
    assert legacy_metric("val/miou") is None


def test_the_report_table_maps_an_old_run() -> None:
    raw = pd.DataFrame({"run_id": ["a"], "metrics.probe/miou": [0.2], "metrics.val/miou": [0.1]})
    names = [current_metric(c[len("metrics.") :]) for c in raw.columns if c.startswith("metrics.")]
    assert names == ["rep/probe_miou", "val/miou"]
