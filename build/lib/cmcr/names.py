"""Every name that crosses a module or a store boundary, written once.

MLflow tag keys, metric keys, Optuna user/system attribute names and the embedded default
URIs: engine, sweep and results import them from here, so a rename is one edit and a typo is
an ImportError instead of a silently empty dashboard column (docs/architecture.md, "MLflow
names"). Nothing here imports anything heavy: every layer may import it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cmcr.registry import DATASETS

# ---- embedded defaults (one machine, no servers) ---------------------------------------------
OUTPUT_DIR = "runs"  # checkpoints, weights and the embedded stores live under here
DEFAULT_TRACKING_URI = f"sqlite:///{OUTPUT_DIR}/mlflow.db"
DEFAULT_STORAGE = f"sqlite:///{OUTPUT_DIR}/optuna.db"
DEFAULT_ARTIFACTS = f"{OUTPUT_DIR}/mlartifacts"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
# credentials travel to child processes in the environment (private to the user), never on
# the command line (``ps`` shows every process's argv to every local user)
# the sweep's Optuna storage URL: --storage's default, and how a spawned worker receives it
STORAGE_ENV = "CMCR_SWEEP_STORAGE"
SWEEP_TRACKING_ENV = "CMCR_SWEEP_TRACKING_URI"  # a worker's --tracking-uri (when one was given)
# a worker's --set overrides (a JSON list) when one of them holds a secret or a tracking URI
SWEEP_SETS_ENV = "CMCR_SWEEP_SETS"
BACKEND_STORE_ENV = "MLFLOW_BACKEND_STORE_URI"  # read by ``mlflow server`` (``cmcr ui``)
# cmcr's cache folder (the MLflow schema template); else $XDG_CACHE_HOME/cmcr, else ~/.cache/cmcr
CACHE_DIR_ENV = "CMCR_CACHE_DIR"
# where *this machine* keeps the data: ``cmcr.configs.load_config`` reads these (only there)
# into the config key each names; they beat presets, not --set
DATA_ROOT_ENV = "CMCR_DATA_ROOT"
KITTI_ROOT_ENV = "CMCR_KITTI_ROOT"
ROOT_ENVS = {"data.dataroot": DATA_ROOT_ENV, "semantickitti.root": KITTI_ROOT_ENV}
# how long a tracking server or a storage may take to answer before it is reported unreachable
REACH_WAIT_S = 10
# MLflow experiments: a sweep records into one experiment named after its study; ad-hoc runs
# (cmcr pretrain / probe / finetune) and studies begun before issue 16 live in this one
DEFAULT_EXPERIMENT = "cmcr"
# MLflow 3's experiment kind (tag ``ExpTag.KIND``): model training, so the UI opens the runs view
# rather than the GenAI one (traces, token usage). The UI of 3.17 also follows its sidebar
# switch, which a link sets with ``UI_WORKFLOW_QUERY`` (tests/test_mlflow_experiments.py pins both)
EXPERIMENT_KIND_TRAINING = "custom_model_development"
UI_WORKFLOW_QUERY = "workflowType=machine_learning"


class Tag:
    """MLflow run tag keys."""

    KIND = "cmcr.kind"  # pretrain | probe | finetune | trial | study
    VARIANT = "cmcr.variant"
    PRESET = "cmcr.preset"
    SEED = "cmcr.seed"
    GIT_COMMIT = "cmcr.git_commit"
    DATASET_FINGERPRINT = "cmcr.dataset_fingerprint"
    STATUS_REASON = "cmcr.status_reason"  # why a run failed / was killed
    NUM_PROCESSES = "cmcr.num_processes"
    PRETRAIN_DONE = "cmcr.pretrain_done"
    PRETRAINED = "cmcr.pretrained"  # what a probe / fine-tune started from
    PRETRAINED_RUN = "cmcr.pretrained_run"
    RESUMED_FROM_STEP = "cmcr.resumed_from_step"
    # a pruned trial's run: the pre-training step (or downstream epoch) where it was stopped
    PRUNED_AT_STEP = "cmcr.pruned_at_step"
    PRUNED_PHASE = "cmcr.pruned_phase"  # pretrain | downstream
    N_TRIALS = "cmcr.n_trials"
    SLOT = "cmcr.slot"  # a sweep trial's slot (its child runs are found again by it)
    PARENT_RUN = "mlflow.parentRunId"
    RUN_NAME = "mlflow.runName"
    NOTE = "mlflow.note.content"  # the run's description (markdown), shown on its page
    STUDY = "optuna.study"
    TRIAL = "optuna.trial"
    RETRY_OF = "optuna.retry_of"
    STATE = "optuna.state"  # the Optuna state of the trial a run belongs to
    STORAGE = "optuna.storage"  # redacted
    DIRECTION = "optuna.direction"
    SAMPLER = "optuna.sampler"
    BEST_TRIAL = "optuna.best_trial"
    BEST_RUN_ID = "optuna.best_run_id"
    # whether the probe's training clouds are augmented (rotation / flips, drawn every epoch)
    PROBE_AUGMENT = "cmcr.probe_augment"
    # the downstream protocol a probe / fine-tune ran (cmcr/engine/downstream_protocol.py)
    PROTOCOL_FROZEN_PARAMS = "cmcr.protocol.frozen_params"
    PROTOCOL_TRAINABLE_PARAMS = "cmcr.protocol.trainable_params"
    PROTOCOL_LABELS = "cmcr.protocol.labels"  # the label fraction and its unit, in words
    PROTOCOL_TRAIN_SCENES = "cmcr.protocol.train_scenes"
    PROTOCOL_TRAIN_SCANS = "cmcr.protocol.train_scans"
    PROTOCOL_VAL_SCANS = "cmcr.protocol.val_scans"
    PROTOCOL_LOSS = "cmcr.protocol.loss"
    PROTOCOL_OPTIMIZER = "cmcr.protocol.optimizer"
    PROTOCOL_SCHEDULE = "cmcr.protocol.schedule"  # cosine steps, epochs × batches, BN momentum


class ExpTag:
    """MLflow experiment tag keys (MLflow's own, read by its UI)."""

    KIND = "mlflow.experimentKind"  # value: EXPERIMENT_KIND_TRAINING
    NOTE = "mlflow.note.content"  # the experiment's description (markdown)
    # a saved view of the runs table (columns, sort), opened by ?viewStateShareKey=<key>
    VIEW_PREFIX = "mlflow.sharedViewState."
    STUDY = "optuna.study"  # the study whose experiment this is


class Kind:
    """Values of ``Tag.KIND``."""

    PRETRAIN = "pretrain"
    PROBE = "probe"
    FINETUNE = "finetune"
    TRIAL = "trial"
    STUDY = "study"


class Metric:
    """MLflow metric keys (``train/*``: step = optimiser step; ``val/*``: step = epoch)."""

    TRAIN_LOSS = "train/loss"
    TRAIN_LOSS_PREFIX = "train/loss_"  # + loss term name
    TRAIN_LR = "train/lr"
    TRAIN_SAMPLES_PER_S = "train/samples_per_s"
    # pre-training's loss on the held-out scenes (data.holdout_scenes), step = optimiser step
    HOLDOUT_LOSS = "holdout/loss"
    HOLDOUT_LOSS_PREFIX = "holdout/loss_"  # + loss term name
    SEG_LOSS = "train/seg_loss"
    VAL_MIOU = "val/miou"
    # val/miou in %, rounded to 2 decimals, logged beside it: the column a person reads in
    # MLflow's runs table, which shows a metric's stored digits and cannot format them (every
    # stored score stays a fraction; the report, terminal and dashboard print % themselves)
    VAL_MIOU_PCT = "val/miou_pct"
    VAL_FWIOU = "val/fwiou"
    VAL_IOU_PREFIX = "val/iou_"  # + challenge class name
    DOWNSTREAM_SECONDS = "downstream/seconds"
    # the representation probe during pre-training (sweep.eval_every; step = optimiser step)
    PROBE_MIOU = "rep/probe_miou"
    PROBE_SECONDS = "rep/probe_seconds"  # its cumulative cost so far
    PROBE_TIME_SHARE = "rep/probe_time_share"  # its cost as a share of pre-training time
    # label-free scores of the probe's frozen features (cmcr/engine/spectrum.py), same steps
    PROBE_RANKME = "rep/rankme"  # effective rank (Garrido et al. 2023): higher is better
    PROBE_ALPHA_REQ = "rep/alpha_req"  # eigenspectrum decay (Agrawal et al. 2022): best near 1
    STUDY_BEST_VALUE = "study/best_value"


def objective_name(mode: str | None) -> str:
    """The sweep objective's name as optuna-dashboard shows it: ``val/miou (probe)`` (the
    downstream linear probe's mIoU; the in-training representation probe is rep/probe_miou)."""
    return f"{Metric.VAL_MIOU} ({mode})" if mode else Metric.VAL_MIOU


# runs logged before 2026-12-06 named the representation probe's metrics probe/* (read as the
# objective, issue 32); the report's readers map them to today's names (cmcr.results.collect)
RENAMED_METRICS = (
    ("probe/miou", Metric.PROBE_MIOU),  # and probe/miou_<fit>
    ("probe/seconds", Metric.PROBE_SECONDS),
    ("probe/time_share", Metric.PROBE_TIME_SHARE),
    ("probe/rankme", Metric.PROBE_RANKME),
    ("probe/alpha_req", Metric.PROBE_ALPHA_REQ),
)


def current_metric(key: str) -> str:
    """``key`` under today's name (an old run's ``probe/miou_raw`` is ``rep/probe_miou_raw``)."""
    for old, new in RENAMED_METRICS:
        if key == old or key.startswith(old + "_"):
            return new + key[len(old) :]
    return key


def legacy_metric(key: str) -> str | None:
    """The name an old run logged ``key`` under, if it was renamed; else None."""
    for old, new in RENAMED_METRICS:
        if key == new or key.startswith(new + "_"):
            return old + key[len(new) :]
    return None


def display_metric(objective: str) -> str:
    """The column MLflow's runs table shows for ``objective``: an mIoU's ``_pct`` twin (in %, 2
    decimals, ``Metric.VAL_MIOU_PCT``), any other metric itself."""
    return f"{objective}_pct" if objective.endswith("miou") else objective


def dataset_key(dataset: str, key: str) -> str:
    """A downstream metric / artifact key of one dataset: a dataset registered with
    ``plain_keys`` (nuScenes) keeps the plain names (``val/miou``), another goes after the first
    segment (``val/semantickitti/miou``, ``train/semantickitti/seg_loss``,
    ``downstream/semantickitti/seconds``). An unknown dataset is an error."""
    if DATASETS.get(dataset).plain_keys:
        return key
    head, sep, tail = key.partition("/")
    return f"{head}/{dataset}/{tail}" if sep else f"{key}.{dataset}"


class Attr:
    """Optuna trial / study user attributes and system attributes."""

    # trial user attrs
    RUN_ID = "mlflow_run_id"  # seed 0's run (kept for old studies and the UI)
    RUN_IDS = "mlflow_run_ids"  # {seed: run id}, every seed of the trial
    SEED_RESULTS = "seed_results"  # {seed: val mIoU} of finished seeds
    SLOT = "cmcr.slot"
    WORKER = "cmcr.worker"
    FAIL_REASON = "fail_reason"
    RETRY_REASON = "retry_reason"
    FAIL_KIND = "cmcr.fail_kind"  # own | deterministic | interrupted | lost | environment
    # where the running trial stands (cmcr.progress record: phase, step, total, rate, eta_s, t,
    # seed), refreshed every few seconds; the live sweep view and --status read it
    PROGRESS = "cmcr.progress"
    SLURM_JOB = "cmcr.slurm_job"  # the SLURM job (``<array id>_<task>``) of the attempt's worker
    # a trial queued by --add-seeds: the COMPLETE trial whose configuration it extends, and the
    # seeds it runs (other trials run 0..S-1 of the study's --seeds)
    SEEDS_OF = "cmcr.seeds_of"
    TRIAL_SEEDS = "cmcr.trial_seeds"
    # study user attrs
    PARENT_RUN = "mlflow_parent_run_id"
    DEFINITION = "cmcr.definition"
    PRESET = "cmcr.preset"
    OBJECTIVE = "cmcr.objective"
    SEEDS = "cmcr.seeds"
    OVERRIDES = "cmcr.overrides"
    N_TRIALS = "cmcr.n_trials"
    SLURM_JOBS = "cmcr.slurm_jobs"  # the SLURM job arrays submitted for the study (--cancel)
    REOPENED = "cmcr.reopened"  # {slot: first trial number counted} after --retry-failed
    # {unit: {"trial": n, "seeds": [...]}}: every --add-seeds request, written before its trials
    ADDED_SEEDS = "cmcr.added_seeds"
    # trial system attrs Optuna's RetryFailedTrialCallback writes
    FAILED_TRIAL = "failed_trial"
    RETRY_HISTORY = "retry_history"


# Overrides that say where this machine keeps things, not what the experiment computes: they may
# differ between sweep workers and between a run and its resume.
LOCAL_KEYS = ("tracking.", "data.dataroot", "data.num_workers", "semantickitti.root")


def is_local_key(key: str) -> bool:
    """Whether dotted config ``key`` describes the machine rather than the experiment."""
    return key.startswith(LOCAL_KEYS)


def cache_folder() -> Path | None:
    """cmcr's cache folder (the MLflow schema template, split records): ``$CMCR_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/cmcr``, else ``~/.cache/cmcr``; None without a home (no cache)."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "cmcr"
    try:
        return Path.home() / ".cache" / "cmcr"
    except RuntimeError:  # no HOME and no passwd entry
        return None
