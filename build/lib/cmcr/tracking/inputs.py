"""What a run records about its inputs, built once from the config: the run spec.

``run_spec(cfg, kind=...)`` is the one place a config becomes what MLflow stores for a run:
its experiment, name, kind and parent, the standard tags (variant, preset, seed, git commit,
dataset fingerprint), the params (the flattened config, as text) and the dataset inputs (the
UI's Dataset column). ``cmcr.tracking.runs.RunLogger.start`` takes the spec, never the config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cmcr.configs import Config, config_to_dict, flatten_config, load_config, variant_name
from cmcr.errors import first_line
from cmcr.names import Kind, Tag, is_local_key
from cmcr.tracking.store import param_text, resolve_tracking_uri, tag_text
from cmcr.uris import redact

_log = logging.getLogger("cmcr.tracking")
# Files above this size enter the dataset fingerprint by size and mtime instead of contents.
_FINGERPRINT_CONTENT_MAX = 8 << 20


@dataclass(frozen=True)
class DatasetRef:
    """One dataset input of a run: ``<world>/<split>``, its digest, source and context."""

    name: str
    digest: str
    source: str
    context: str  # "train" | "validation"


@dataclass(frozen=True)
class RunSpec:
    """Everything a run needs to start, prebuilt from the config by ``run_spec``."""

    uri: str
    experiment: str
    kind: str
    tags: dict[str, str]  # the standard tags, the parent and the caller's, as text
    params: dict[str, str] | None  # None: log no params (a study's parent may skip them)
    name: str | None = None
    parent: str | None = None
    inputs: tuple[DatasetRef, ...] = ()
    system_metrics: bool = False


NAMED_CHANGES = 3  # a run name lists at most this many settings that differ from its preset


def run_name(cfg: Config, kind: str) -> str:
    """A run's name from what it is: ``pretrain demo mim=0.5``: the kind, the preset and the
    settings that differ from the preset (machine-local keys aside; the first few, short keys),
    instead of MLflow's random ``loud-duck-578``."""
    head = f"{kind} {cfg.preset}"
    try:
        preset = flatten_config(load_config(cfg.preset))
    except Exception:  # a preset file that moved since: the name is only a label
        return head
    changed = [(k, v) for k, v in flatten_config(cfg).items()
               if not is_local_key(k) and k != "preset" and preset.get(k) != v]  # fmt: skip
    if kind in (Kind.PROBE, Kind.FINETUNE):
        changed = [(k, v) for k, v in changed if k != "downstream.mode"]
    parts = [f"{k.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float) else
             f"{k.rsplit('.', 1)[-1]}={v}" for k, v in changed[:NAMED_CHANGES]]  # fmt: skip
    more = f" +{len(changed) - NAMED_CHANGES}" if len(changed) > NAMED_CHANGES else ""
    return " ".join([head, *parts]) + more


def run_spec(
    cfg: Config,
    *,
    kind: str,
    tags: Mapping[str, Any] | None = None,
    parent: str | None = None,
    name: str | None = None,
    params: Mapping[str, Any] | None = None,
    log_params: bool = True,
) -> RunSpec:
    """The run spec of a run of ``kind`` on ``cfg`` (creates a missing embedded store).

    ``params``: what a new run records instead of ``config_params(cfg)`` (a sweep creates a
    trial's run with the config the trainer will see, before the trainer runs).
    """
    all_tags = standard_tags(cfg, kind, parent)
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    recorded = None
    if log_params:
        recorded = (
            config_params(cfg) if params is None else {k: param_text(v) for k, v in params.items()}
        )
    inputs = (
        () if kind == Kind.STUDY else dataset_inputs(cfg, kind, all_tags[Tag.DATASET_FINGERPRINT])
    )
    return RunSpec(
        uri=resolve_tracking_uri(cfg),
        experiment=cfg.tracking.experiment,
        kind=kind,
        tags={k: tag_text(v) for k, v in all_tags.items()},
        params=recorded,
        name=name or run_name(cfg, kind),
        parent=parent,
        inputs=inputs,
        system_metrics=cfg.tracking.system_metrics,
    )


def standard_tags(cfg: Config, kind: str, parent_run_id: str | None) -> dict[str, str]:
    """The contract tags every run carries (docs/architecture.md, MLflow names). A study's
    parent run carries only what holds for the whole study: no seed (its trials run their own),
    and its variant only when the parent says the study does not search it (cmcr.sweep.parent)."""
    tags = {
        Tag.KIND: kind,
        Tag.VARIANT: variant_name(cfg),
        Tag.PRESET: cfg.preset,
        Tag.SEED: str(cfg.train.seed),
        Tag.GIT_COMMIT: git_commit(),
        Tag.DATASET_FINGERPRINT: dataset_fingerprint(cfg),
    }
    if kind == Kind.STUDY:
        del tags[Tag.SEED], tags[Tag.VARIANT]
    if parent_run_id:
        tags[Tag.PARENT_RUN] = parent_run_id
    return tags


def dataset_inputs(cfg: Config, kind: str, fingerprint: str) -> tuple[DatasetRef, ...]:
    """The dataset inputs of a run (the UI's Dataset column): the world's splits it reads,
    named ``<world>/<split>``, digest = the dataset fingerprint, context train / validation."""
    root = Path(cfg.data.dataroot)
    world = root.resolve().name or str(root)
    source = json.dumps({"uri": redact(str(root.resolve())), "version": cfg.data.version})
    splits = [("train", cfg.data.train_split)]
    if kind != Kind.PRETRAIN:  # pre-training validates on held-out scenes of its train split
        splits.append(("validation", cfg.data.val_split))
    return tuple(DatasetRef(f"{world}/{split}", fingerprint, source, context)
                 for context, split in splits)  # fmt: skip


def log_inputs(client: Any, run_id: str, inputs: tuple[DatasetRef, ...], tries: int = 3) -> None:
    """``log_inputs``, tried again when another process created the same dataset meanwhile:
    MLflow's server finds-or-creates the dataset row without a lock, so two workers starting
    runs on one world at once can hit its unique key (seen with PostgreSQL behind a server);
    the second try finds the row. The Dataset column is a convenience: a store that still
    refuses is logged as a warning, not a failed run."""
    from mlflow.exceptions import MlflowException  # lazy: mlflow takes seconds to import

    datasets = mlflow_inputs(inputs)
    for attempt in range(tries):
        try:
            client.log_inputs(run_id, datasets=datasets)
            return
        except MlflowException as exc:
            if attempt == tries - 1:
                first = first_line(exc, empty="(no message)")
                _log.warning(redact(f"run {run_id}: datasets not logged ({first})"))
                return
            time.sleep(0.2 * (attempt + 1))


def mlflow_inputs(inputs: tuple[DatasetRef, ...]) -> list[Any]:
    """The run's dataset inputs as MLflow ``DatasetInput`` entities (context as input tag)."""
    # lazy: mlflow takes seconds to import
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    return [DatasetInput(Dataset(name=d.name, digest=d.digest, source_type="local",
                                 source=d.source), tags=[InputTag(MLFLOW_DATASET_CONTEXT, d.context)])
            for d in inputs]  # fmt: skip


def git_commit() -> str:
    """``git rev-parse HEAD`` of the source tree, or "unknown" outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def dataset_fingerprint(cfg: Config) -> str:
    """A short hash of the dataroot's table files (contents if small, else size + mtime)."""
    folder = Path(cfg.data.dataroot) / cfg.data.version
    if not folder.is_dir():
        return "missing"
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.json")):
        st = f.stat()
        h.update(f.name.encode())
        if st.st_size <= _FINGERPRINT_CONTENT_MAX:
            h.update(f.read_bytes())
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def config_params(cfg: Config) -> dict[str, str]:
    """``flatten_config(cfg)`` as MLflow params: string values, credentials redacted."""
    return {k: param_text(v) for k, v in flatten_config(cfg).items()}


def config_yaml(cfg: Config) -> str:
    """The resolved config as YAML (the ``config.yaml`` artifact), credentials redacted."""
    return redact(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
