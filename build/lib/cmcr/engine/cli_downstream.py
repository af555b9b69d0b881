"""``cmcr probe``, ``cmcr finetune`` and ``cmcr evaluate``: downstream evaluation on
nuScenes-lidarseg (default) or another registered dataset (``--dataset semantickitti``)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from cmcr.configs import apply_overrides, list_presets, load_config, set_values
from cmcr.errors import CMCRError
from cmcr.progress import fmt_pct
from cmcr.registry import DATASETS
from cmcr.uris import redact_logging

SET_EXAMPLE = {  # a key each command reads, for its --help
    "probe": "downstream.probe_epochs=10",
    "finetune": "downstream.finetune_label_fraction=0.1",
    "evaluate": "data.val_split=mini_val",
}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Arguments of the three sub-commands (``name`` is the one being built)."""
    parser.add_argument(
        "--config", default=None, help=f"preset name ({', '.join(list_presets())}) or YAML file"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help=f"dotted config override(s), repeatable (e.g. {SET_EXAMPLE[name]})",
    )
    # no argparse choices: the registered datasets are known once their modules are imported
    # (torch among them), and `cmcr --help` stays fast; the config check refuses an unknown
    # name with the list of the registered ones
    parser.add_argument(
        "--dataset",
        default=None,
        help="downstream dataset, a registered name (sets downstream.dataset; default nuscenes; "
        "also semantickitti)",
    )
    parser.add_argument(
        "--export",
        "--export-lidarseg",
        dest="export_lidarseg",
        default=None,
        metavar="DIR",
        help="write predictions in the dataset's submission layout under DIR (nuScenes: "
        "lidarseg/<split>/*.bin; SemanticKITTI: sequences/NN/predictions/*.label), every scan "
        "of the split; DIR must be empty or absent (checked before training)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="with --export: clear DIR first when it holds a previous export",
    )
    if name == "evaluate":
        _evaluate_arguments(parser)
    else:
        parser.add_argument(
            "--pretrained",
            required=True,
            help="RUN_ID (its backbone.pt) | PATH to a backbone.pt | none (random init)",
        )
        parser.add_argument("--run-id", default=None, help="log into this existing MLflow run")
        parser.add_argument("--parent-run-id", default=None, help="nest under this MLflow run")


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """What only `cmcr evaluate` takes: the weights (--run or --head), the split, --zip."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", default=None, help="a probe/finetune run id (its saved weights)")
    src.add_argument("--head", default=None, help="linear head file (seg_head.pt)")
    parser.add_argument(
        "--pretrained",
        default=None,
        help="with --head: RUN_ID | PATH to backbone weights | none",
    )
    parser.add_argument(
        "--split",
        default=None,
        help="split to score (default: the dataset's validation split); a split without "
        "labels (nuScenes v1.0-test's test, SemanticKITTI's test: 11-21) runs inference "
        "only and needs --export",
    )
    parser.add_argument(
        "--zip", action="store_true", help="with --export DIR: also write DIR.zip (upload)"
    )


def _load_cfg(args: argparse.Namespace, default: str | Path | None = None):
    overrides = set_values(args.overrides)
    if getattr(args, "dataset", None):
        overrides.append(f"downstream.dataset={args.dataset}")
    return load_config(args.config or default, overrides)


def run(args: argparse.Namespace) -> int:
    """Dispatch on the sub-command name; prints the metrics as one JSON line."""
    from cmcr.runlog import setup_console  # lazy: keeps `cmcr --help` fast

    setup_console()  # cmcr's lines on the terminal; MLflow's INFO and torch warnings to run.log
    redact_logging()
    if args.command == "evaluate":
        return _evaluate(args)
    # lazy: torch and spconv load only when a downstream command runs (`cmcr --help` builds
    # every command's parser)
    from cmcr.engine.downstream import run_downstream

    cfg = apply_overrides(_load_cfg(args), {"downstream.mode": args.command})
    from cmcr.engine.preflight import before_downstream  # lazy: as run_downstream above

    before_downstream(cfg)  # config and tracking server, before any run exists
    res = run_downstream(
        cfg,
        pretrained=args.pretrained,
        run_id=args.run_id,
        parent_run_id=args.parent_run_id,
        export_dir=args.export_lidarseg,
        announce=_announce,
        overwrite=args.overwrite,
    )
    _print(args.command, res.miou, res.fwiou, res.per_class, run_id=res.run_id)
    return 0


def _announce(lines: list[str]) -> None:
    """The protocol, before training; stderr, so stdout's last line stays the metrics JSON."""
    print("\n".join(lines), file=sys.stderr, flush=True)


def _evaluate(args: argparse.Namespace) -> int:
    # lazy: torch and spconv load only when `cmcr evaluate` runs
    from cmcr.engine.checkpoint import run_dir
    from cmcr.engine.evaluate import run_evaluate
    from cmcr.engine.seg_weights import run_dir_weights
    from cmcr.runlog import quiet_torch  # lazy: as above

    quiet_torch()  # torch's import reset its loggers

    if args.zip and args.export_lidarseg is None:
        raise CMCRError("--zip needs --export DIR (it zips DIR)")
    if args.run:
        if args.pretrained is not None:
            raise CMCRError("--run uses the run's own weights; drop --pretrained (or use --head)")

        base = load_config(args.config, set_values(args.overrides))  # for tracking.output_dir
        sub = _run_subfolder(run_dir(base, args.run), args.dataset)
        # the run's own config (voxel coordinates, root, ...) unless --config names another
        cfg = _load_cfg(args, run_dir(base, args.run) / sub / "config.yaml")
        backbone, head = run_dir_weights(cfg, str(Path(args.run) / sub) if sub else args.run)
        pretrained: str | None = str(backbone)
    else:
        if args.pretrained is None:
            raise CMCRError("--head needs --pretrained RUN_ID|PATH|none (the encoder weights)")
        cfg, head, pretrained = _load_cfg(args), Path(args.head), args.pretrained
    m = run_evaluate(
        cfg,
        pretrained=pretrained,
        head=head,
        split=args.split,
        export_dir=args.export_lidarseg,
        overwrite=args.overwrite,
        zipped=args.zip,
    )
    if m is None:  # an unlabelled split: predictions written, nothing scored
        _print("evaluate", math.nan, math.nan, {}, run_id=args.run)
    else:
        _print("evaluate", m.miou, m.fwiou, m.per_class, run_id=args.run)
    return 0


def _run_subfolder(folder: Path, dataset: str | None) -> str:
    """Where ``folder`` (runs/<id>) keeps the evaluation's weights and config.yaml: its
    dataset's subfolder ("" for nuScenes, "semantickitti" for SemanticKITTI); ``dataset``
    (--dataset) chooses among several, else the plain one, else the only one saved."""
    names = [dataset] if dataset else list(DATASETS.names())
    saved = {
        sub: name
        for name in names
        if (folder / (sub := DATASETS.get(name).subfolder()) / "config.yaml").is_file()
    }
    if not saved:
        which = f"the {dataset} evaluation's " if dataset else "a "
        raise CMCRError(
            f"--run '{folder.name}': no config.yaml of {which}probe / finetune run in {folder} "
            "(expected the output folder of a cmcr probe or finetune run)"
        )
    if "" in saved or len(saved) == 1:
        return "" if "" in saved else next(iter(saved))
    raise CMCRError(
        f"--run '{folder.name}': evaluations of {', '.join(sorted(saved.values()))} are saved; "
        "choose one with --dataset"
    )


def _print(kind: str, miou: float, fwiou: float, per_class: dict, run_id: str | None) -> None:
    def clean(v: float) -> float | None:
        return None if math.isnan(v) else round(v, 6)

    line = {
        "kind": kind,
        "run_id": run_id,
        "miou": clean(miou),
        "fwiou": clean(fwiou),
        "per_class": {k: clean(v) for k, v in per_class.items()},
    }
    # a person reads percent (stderr); stdout's last line stays the JSON, fractions as stored
    run = f" (run {run_id})" if run_id else ""
    print(f"{kind}: mIoU {fmt_pct(miou)} %, fwIoU {fmt_pct(fwiou)} %{run}", file=sys.stderr)
    print(json.dumps(line))
