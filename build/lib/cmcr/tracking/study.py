"""A sweep's face in MLflow: the study's experiment, its saved runs view, the markdown notes of
the experiment and the parent run, and links into the UI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cmcr.adapters.mlflow_views import runs_view, view_query
from cmcr.configs import Config
from cmcr.names import DEFAULT_EXPERIMENT, UI_WORKFLOW_QUERY, ExpTag, Kind, Tag, display_metric
from cmcr.tracking.runs import set_tag_shared
from cmcr.tracking.store import TAG_MAX, client_for, clip, get_or_create_experiment, search_value
from cmcr.uris import redact, sqlite_path, tracking_uri


def study_experiment(cfg: Config, study: str) -> str:
    """The MLflow experiment a sweep of ``study`` records into: ``cfg.tracking.experiment`` when
    it was changed from the default, else one named after the study (issue 16). A study begun
    before that, whose parent run lives in the default experiment, stays there (its resumed
    trials beside its earlier ones); looked up only in stores on this machine, never over http
    before the preflight check has bounded MLflow's retries."""
    if cfg.tracking.experiment != DEFAULT_EXPERIMENT:
        return cfg.tracking.experiment
    uri = tracking_uri(cfg.tracking.tracking_uri)
    db = sqlite_path(uri)
    if uri.startswith(("http://", "https://")) or (db is not None and not db.is_file()):
        return study
    client = client_for(uri)
    if client.get_experiment_by_name(study) is not None:
        return study
    legacy = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    if legacy is None:
        return study
    query = f"tags.`{Tag.KIND}` = '{Kind.STUDY}' and tags.`{Tag.STUDY}` = {search_value(study)}"
    found = client.search_runs([legacy.experiment_id], filter_string=query, max_results=1)
    return DEFAULT_EXPERIMENT if found else study


def prepare_study_experiment(
    uri: str,
    experiment: str,
    *,
    study: str,
    objective: str,
    direction: str,
    params: list[str],
    note: str = "",
) -> str:
    """Create or mark ``experiment`` for sweep ``study``: model-training kind, a saved view of its
    runs table (the objective and the swept ``params`` as columns, sorted by the objective, the
    trials only) and its description. Returns the experiment id."""
    client = client_for(uri)
    exp_id = get_or_create_experiment(client, experiment, uri)
    shown = display_metric(objective)  # val/miou_pct: the runs table cannot round val/miou
    key, value = runs_view(f"study {study}", [shown],
                           sorted(params), order_by=shown, ascending=direction == "minimize",
                           filter_string=f"tags.`{Tag.KIND}` = '{Kind.TRIAL}' and "
                                         f"tags.`{Tag.STUDY}` = {search_value(study)}")  # fmt: skip
    client.set_experiment_tag(exp_id, key, value)
    client.set_experiment_tag(exp_id, ExpTag.STUDY, clip(redact(study), TAG_MAX))
    if note:
        client.set_experiment_tag(exp_id, ExpTag.NOTE, clip(redact(note), TAG_MAX))
    return exp_id


def study_note(
    study: str,
    *,
    objective: str,
    direction: str,
    params: list[str],
    best: Mapping[str, Any] | None = None,
    report: str | None = None,
) -> str:
    """The markdown description of a study's experiment and parent run: what is swept and
    optimised, where the table view and the report are, and the best trial with its run."""
    shown = display_metric(objective)  # the column the saved view shows
    lines = [
        f"**Optuna study `{study}`**: {direction} `{objective}` (trial value: mean over seeds).",
        "",
        f"Swept: {', '.join(f'`{p}`' for p in sorted(params)) or 'nothing (a grid of variants)'}.",
        "",
        f"Runs table with these columns, sorted by `{shown}`"
        + (" (the same mIoU in %, 2 decimals)" if shown != objective else "")
        + f": *Views → study {study}* above the table, or this page's address with "
        f"`?{view_query()}`.",
    ]
    if best:
        value = (f"{best['value'] * 100:.2f} %" if objective.endswith("miou")
                 else f"{best['value']:.4g}")  # fmt: skip
        lines += ["", f"Best so far: trial {best['trial']}, `{objective}` = {value}, "
                      f"run [{best['run_id']}](#/experiments/{best['experiment_id']}/runs/"
                      f"{best['run_id']})."]  # fmt: skip
    if report:
        lines += ["", f"Report: [{report}]({report})"]
    return "\n".join(lines)


def describe_study(
    uri: str, experiment_id: str, parent_run_id: str | None, note: str, *, shared: bool = False
) -> None:
    """Write ``note`` (markdown) as the description of the experiment and of the study's parent
    run (tag ``mlflow.note.content``: the UI shows it on their pages)."""
    client = client_for(uri)
    text = clip(redact(note), TAG_MAX)
    client.set_experiment_tag(experiment_id, ExpTag.NOTE, text)
    if parent_run_id:
        set_tag_shared(uri, parent_run_id, Tag.NOTE, text) if shared else client.set_tag(
            parent_run_id, Tag.NOTE, text
        )


def ui_urls(base: str, experiment_id: str, run_ids: Mapping[str, str] | None = None) -> dict:
    """Links into the MLflow UI at ``base`` (``http://127.0.0.1:5000``): the experiment's runs
    table in its saved study view, and each run's page (``{label: run id}``), all opening the
    model-training side of MLflow 3's UI."""
    root = f"{base.rstrip('/')}/#/experiments/{experiment_id}"
    out = {"runs": f"{root}/runs?{view_query()}&{UI_WORKFLOW_QUERY}"}
    for label, run_id in (run_ids or {}).items():
        out[label] = f"{root}/runs/{run_id}?{UI_WORKFLOW_QUERY}"
    return out
