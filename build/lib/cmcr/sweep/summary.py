"""What a sweep says: the start lines, the closing summary, where to look, ``--status`` and ``--list``.

Text only, from the stored study and its plan (``cmcr.sweep.runner.Plan``); the sweep's glue
(cmcr.sweep.cli) prints it. The report a finished sweep points to is built here, best effort.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from cmcr.configs import load_config, parse_override
from cmcr.errors import CMCRError, first_line
from cmcr.guard import path_slug
from cmcr.names import Attr
from cmcr.progress import fmt_duration, fmt_pct
from cmcr.sweep import recovery, runner, seeds
from cmcr.sweep.estimate import estimate
from cmcr.sweep.progress import clip, running_trial, short_params, trial_seconds
from cmcr.sweep.slurm import status_notes
from cmcr.sweep.space import builtin_studies, parse_study_file
from cmcr.tracking.store import check_readable, client_for, resolve_tracking_uri
from cmcr.tracking.study import ui_urls
from cmcr.uris import public_url, redact, tracking_uri

MAX_NAMED = 8  # trials the closing line names before "and N more"


def start_lines(plan: Any, study: Any, parent: str, before: int, est: Any) -> str:
    """What the sweep will do, said before it starts: preset, trials, workers, time."""
    slots = runner.n_slots(plan, study)
    units = runner.n_units(plan, study) - slots
    trials = study.get_trials(deepcopy=False)
    todo = sum(1 for t in trials if t.state.name in ("WAITING", "RUNNING"))
    grown = f", grown from {before}" if before and slots > before else ""
    adding = f" + {units} adding seeds{_owed(study)}" if units else ""
    seeds = f" × {plan.opts.seeds} seeds" if plan.opts.seeds > 1 else ""
    lines = [
        f"study '{plan.study_name}': preset {plan.base.preset}, {slots} trial(s){seeds}{grown}"
        f"{adding}; {todo} to run now on {plan.opts.workers} worker(s) "
        f"({len(trial_seconds(trials))} finished before)",
        f"  storage {redact(plan.opts.storage)}; MLflow parent run {parent}",
    ]
    if est is not None:
        total = est.total_s(todo, plan.opts.workers)
        if total is None:
            lines.append(f"  time: no estimate yet ({est.source}); the view shows one later")
        else:
            lines.append(
                f"  estimated time: {fmt_duration(total)} ({fmt_duration(est.trial_s)} per "
                f"trial: {est.source})"
            )
    return "\n".join(lines)


def queue_line(plan: Any, before: int, est: Any) -> str | None:
    """Said before anything is queued: the trials this start adds and their estimated time
    (None when it adds none)."""
    new = max(0, plan.n_trials - before)
    if not new:
        return None
    seeds = f" × {plan.opts.seeds} seeds" if plan.opts.seeds > 1 else ""
    text = f"study '{plan.study_name}': queueing {new} new trial(s){seeds}"
    total = est.total_s(new, plan.opts.workers) if est is not None else None
    if total is not None:
        text += f", about {fmt_duration(total)} on {plan.opts.workers} worker(s)"
    return text


def _owed(study: Any) -> str:
    """`` (to #3, #0)``: the trials whose configurations get seeds still to run."""
    done = {t.user_attrs.get(Attr.SLOT) for t in study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE"}  # fmt: skip
    owed = [f"#{u['trial']}" for slot, u in seeds.requested(study).items() if slot not in done]
    return f" (to {', '.join(owed)})" if owed else ""


def with_noise(summary: dict[str, Any], study: Any) -> dict[str, Any]:
    """``summary`` (a finished sweep's, or ``--status``'s) with the seed noise of the study's
    finished configurations around its best trial: ``noise`` (cmcr.results.stats.Noise, the
    configurations in ``seeds.seed_values`` order), ``noise_trials`` (each one's first trial),
    ``noise_text`` (the seed SD beside the spread, in words), ``noise_hint`` (how to measure it)."""
    if "best_trial" not in summary:
        return summary
    # lazy: scipy's statistics cost about a second; only a sweep with finished trials needs them
    from cmcr.results import stats

    configs = seeds.seed_values(study)
    keys = list(configs)
    best = seeds.params_key(summary["best_params"])
    if best not in keys:  # trials no sweep queued (no slot): nothing to group by
        return summary
    noise = stats.seed_noise(
        [values for _, values in configs.values()],
        maximise=study.direction.name == "MAXIMIZE",
        best=keys.index(best),
    )
    return {**summary, "noise": noise, "noise_trials": [first.number for first, _ in configs.values()],
            "noise_text": stats.noise_sentence(noise), "noise_hint": stats.ADD_SEEDS_HINT}  # fmt: skip


def noise_clause(summary: dict[str, Any], short: bool = False) -> str:
    """What the seed noise says about the best trial: the configurations indistinguishable
    from it at these seeds with the seed SD and the spread, or how to measure the noise;
    empty with one configuration (``short``: without the figures)."""
    noise = summary.get("noise")
    if noise is None or noise.n_configs < 2:
        return ""
    if not noise.known:
        return f"no seed noise measured yet: {summary['noise_hint']}"
    tied = [f"#{n}" for n, t in zip(summary["noise_trials"], noise.tied, strict=True) if t]
    if short:
        return f"{len(tied)} other configuration(s) within the seed noise of it"
    figures = (f"seed SD {noise.seed_sd * 100:.2f} points "
               f"{'>' if noise.cannot_rank else 'vs'} spread {noise.spread * 100:.2f}")  # fmt: skip
    if not tied:
        return f"no other configuration is within the seed noise of it ({figures})"
    named = ", ".join(tied[:MAX_NAMED]) + (f" and {len(tied) - MAX_NAMED} more"
                                           if len(tied) > MAX_NAMED else "")  # fmt: skip
    verb = "are" if len(tied) > 1 else "is"
    return (f"trial{'s' if len(tied) > 1 else ''} {named} {verb} indistinguishable from it at "
            f"these seeds ({figures})")  # fmt: skip


def noise_line(summary: dict[str, Any]) -> str | None:
    """``--status``'s line on the seed SD beside the spread between configurations."""
    noise = summary.get("noise")
    if noise is None:
        return None
    if not noise.known:
        return (f"seed noise: unknown (no configuration has ≥ 2 finished seeds); measure it "
                f"with {summary['noise_hint']}")  # fmt: skip
    line = f"seed noise: {summary['noise_text']}"
    if noise.cannot_rank:
        line += ": the configurations are within the seed noise: this study cannot rank them"
    return line


def where_to_look(plan: Any, summary: dict[str, Any], *, build_report: bool) -> list[str]:
    """The best trial (and what the seed noise says of it: ``with_noise``), the report's
    file:// path, ``cmcr ui`` and the MLflow URLs."""
    clause = noise_clause(summary)
    lines = [
        f"best: trial #{summary['best_trial']} val mIoU {fmt_pct(summary['best_value'])} % "
        # the params give way to the clause: a piped line stays under 300 characters
        f"({short_params(summary['best_params'], max(60, 200 - len(clause)))})"
        + (f"; {clause}" if clause else "")
    ]
    report = _report(plan, build_report)
    if report:
        lines.append(report)
    urls = _mlflow_urls(plan, summary)
    if urls and urls[0][1].startswith("http://127.0.0.1:5000/"):
        lines.append("MLflow: start the UI with `cmcr ui`, then open")
    elif urls:
        lines.append("MLflow (the tracking server):")
    lines += [f"  {label}: {url}" for label, url in urls]
    return lines


def _report(plan: Any, build: bool) -> str | None:
    """Build the study's report (best effort) and say where it is."""
    out = report_dir(plan)
    if not build:
        page = out / "index.html"
        if page.is_file():
            return f"report: {page.resolve().as_uri()}"
        return f"report: none yet (python dashboards/build.py --study {plan.study_name})"
    try:
        # lazy: the report's chain loads torch and optuna (seconds), only after a real sweep
        from cmcr.results.collect import Selection
        from cmcr.results.report import build as build_report  # lazy: as above

        sel = Selection(
            tracking_uri=resolve_tracking_uri(plan.base),
            study=plan.study_name,
            storage=plan.opts.storage,
        )
        info = build_report(sel, out)
    except Exception as exc:
        return f"report: not built ({redact(str(exc)).splitlines()[0]}); try dashboards/build.py"
    return f"report: {(Path(info['out']) / 'index.html').resolve().as_uri()}"


def report_dir(plan: Any) -> Path:
    """``reports/<study>`` beside the runs folder (``runs`` → ``./reports/<study>``, where
    ``dashboards/build.py --study`` writes it too)."""
    return Path(plan.base.tracking.output_dir).parent / "reports" / path_slug(plan.study_name)


def _mlflow_urls(plan: Any, summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Direct links into ``cmcr ui`` (127.0.0.1:5000, or the tracking server itself): the
    study's runs table in its saved view, the parent run and the best run."""
    try:
        # a read: a missing or foreign store means no links, never a new store (--status)
        uri = check_readable(tracking_uri(plan.base.tracking.tracking_uri))
        remote = uri.startswith(("http://", "https://"))
        base = public_url(uri) if remote else "http://127.0.0.1:5000"
        parent = summary["parent_run_id"]
        exp = client_for(uri).get_run(parent).info.experiment_id
        runs = {"parent run": parent}
        if summary.get("best_run_id"):
            runs["best run"] = summary["best_run_id"]
        urls = ui_urls(base, exp, runs)
        return [("runs table", urls["runs"])] + [(k, urls[k]) for k in runs]
    except Exception:
        return []


def summary_line(summary: dict[str, Any]) -> str:
    """The closing line of a sweep."""
    parts = [f"study '{summary['study']}':"]
    own_fail = summary.get("FAIL", 0) - summary.get("interrupted", 0)
    shown = {**summary, "FAIL": own_fail}
    for state in ("COMPLETE", "PRUNED", "FAIL", "interrupted", "RUNNING", "WAITING"):
        if shown.get(state):
            parts.append(f"{state.lower()} {shown[state]}")
    if "best_value" in summary:
        params = short_params(summary["best_params"], 160)
        clause = noise_clause(summary, short=True)
        parts.append(
            f"best val mIoU {fmt_pct(summary['best_value'])} % (trial {summary['best_trial']}, "
            f"{params})" + (f"; {clause}" if clause else "")
        )
    if not summary["done"]:
        parts.append("(trials still queued or running elsewhere)")
    return " ".join(parts)


def list_studies(preset: str | None = None, overrides: list[str] | None = None) -> str:
    """The built-in studies with their search spaces, pruner and cost on this machine (with
    ``--preset`` / ``--set`` when given, as a sweep would run them)."""
    lines = []
    for name, path in builtin_studies().items():
        spec = parse_study_file(path)
        n = spec.default_n_trials()
        lines.append(
            f"{name}  ({spec.sampler}, {spec.direction} val mIoU, {n} trials by default; {path})"
        )
        lines.append(f"    {_pruner_and_cost(spec, n, preset, overrides or [])}")
        for p in spec.params:
            if p.type in ("float", "int"):
                lines.append(
                    f"    {p.name}: {p.type} [{p.low}, {p.high}]" + (" log" if p.log else "")
                )
            elif p.choice_overrides is not None:
                for label, over in p.choice_overrides.items():
                    lines.append(f"    {p.name} = {label}: {over or '(defaults)'}")
            else:
                lines.append(f"    {p.name}: {p.type} {list(p.choices)}")
        for key, value in spec.fixed.items():
            lines.append(f"    fixed {key} = {value}")
    return redact("\n".join(lines)) if lines else "no built-in studies found"


def _pruner_and_cost(spec: Any, n: int, preset: str | None, overrides: list[str]) -> str:
    """``pruner median; cost here about 4m12s for 12 trials on 1 worker (preset smoke)``."""
    fixed = dict(spec.fixed)
    fixed.update(parse_override(o) for o in overrides)
    try:
        base = load_config(preset or spec.preset or "demo", fixed)
    except CMCRError as exc:
        return f"cost here: unknown ({first_line(exc)})"
    pruner = spec.pruner or runner.default_pruner(base)
    est = estimate(base)
    total = est.total_s(n, 1)
    if total is None:
        return f"pruner {pruner}; cost here: unknown ({est.source})"
    return (
        f"pruner {pruner}; cost here about {fmt_duration(total)} for {n} trials on 1 worker "
        f"(preset {base.preset}, from its measured cost)"
    )


def print_status(plan: Any, now: Any = None) -> int:
    """The stored study as one table: a row per slot (its latest attempt; retries are counted as
    retries of the slot, not as trials), finished ones sorted by value, parameters rounded,
    durations, step progress of running trials; then the best trial and where to look."""
    storage = runner.connect(plan, create=False, read_only=True)
    study = runner.load(plan, storage)
    print(status_table(plan, study, now))
    for line in seeds.status_lines(study, plan.opts.seeds):
        print(line)
    best = _best(study)
    if best is not None:
        summary = {
            "best_trial": best.number,
            "best_value": best.value,
            "best_params": best.params,
            "best_run_id": best.user_attrs.get(Attr.RUN_ID),
            "parent_run_id": study.user_attrs.get(Attr.PARENT_RUN),
        }
        summary = with_noise(summary, study)
        line = noise_line(summary)
        if line:
            print(line)
        for line in where_to_look(plan, summary, build_report=False):
            print(line)
    return 0


_ORDER = {"COMPLETE": 0, "RUNNING": 1, "WAITING": 2, "PRUNED": 3, "FAIL": 4}
_COLUMNS = ("trial", "state", "mIoU %", "time", "params", "run", "note")


def _best(study: Any) -> Any:
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not done:
        return None
    pick = max if study.direction.name == "MAXIMIZE" else min
    return pick(done, key=lambda t: (t.value, -t.number))


def status_table(plan: Any, study: Any, now: Any = None) -> str:
    """``--status``'s table (``now``: the time running trials' durations count to)."""
    now = now or datetime.datetime.now()
    trials = study.get_trials(deepcopy=False)
    jobs = status_notes(trials)  # ``job=<id> (<state>)`` of trials run by SLURM workers
    slots = recovery.by_slot(trials)
    latest = {slot: attempts[-1] for slot, attempts in slots.items()}
    sign = -1 if study.direction.name == "MAXIMIZE" else 1

    def key(t: Any) -> tuple:
        value = sign * t.value if t.value is not None else 0.0
        return (_ORDER.get(t.state.name, 9), value, t.number)

    rows = [_COLUMNS]
    rows += [
        _row(t, slots[t.user_attrs[Attr.SLOT]], jobs, now) for t in sorted(latest.values(), key=key)
    ]
    return "\n".join(_heading(plan, study, slots) + _aligned(rows))


def _heading(plan: Any, study: Any, slots: dict[Any, list[Any]]) -> list[str]:
    """The table's two lines above the rows: the study, its counts by state, its parent run."""
    counts: dict[str, int] = {}
    for attempts in slots.values():
        state = attempts[-1].state.name
        counts[state] = counts.get(state, 0) + 1
    retries = sum(len(a) - 1 for a in slots.values())
    names = ("COMPLETE", "RUNNING", "WAITING", "PRUNED", "FAIL")
    labels = {"WAITING": "queued", "FAIL": "failed"}
    parts = [f"{counts.get(n, 0)} {labels.get(n, n.lower())}" for n in names]
    retry_text = f"; {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""
    parent = study.user_attrs.get(Attr.PARENT_RUN)
    return [
        f"study '{plan.study_name}' (preset {study.user_attrs.get(Attr.PRESET, '?')}, "
        f"{study.direction.name.lower()} val mIoU): {runner.n_units(plan, study)} trial(s): "
        + ", ".join(parts)
        + retry_text,
        f"MLflow parent run {parent}",
    ]


def _row(t: Any, attempts: list[Any], jobs: dict[int, str], now: Any) -> tuple[str, ...]:
    """One slot's row: its latest attempt ``t`` (of ``attempts``) and its notes."""
    end = t.datetime_complete or (now if t.state.name == "RUNNING" else None)
    seconds = (end - t.datetime_start).total_seconds() if t.datetime_start and end else None
    value = fmt_pct(t.value)
    note = [jobs.get(t.number, "").strip()]
    if t.state.name == "RUNNING":
        r = running_trial(t, now)
        if r.phase:
            note.append(f"{r.progress()}, ETA {'stale' if r.stale else fmt_duration(r.left_s)}")
    if len(attempts) > 1:
        prev = attempts[-2]
        why = prev.user_attrs.get(Attr.FAIL_REASON) or recovery.STALE_REASON
        note.append(
            f"attempt {len(attempts)}, retry of #{prev.number} "
            f"({recovery.kind_of(prev)}: {redact(why)})"
        )
    if t.state.name == "FAIL":
        reason = t.user_attrs.get(Attr.FAIL_REASON) or recovery.STALE_REASON
        note.append(f"{recovery.kind_of(t)}: {redact(reason)}")
    note.append(_adds(t).strip())
    return (
        f"#{t.number}",
        t.state.name,
        value,
        fmt_duration(seconds) if seconds is not None else "-",
        short_params(t.params, 60),
        str(t.user_attrs.get(Attr.RUN_ID, "-")),
        "; ".join(n for n in note if n),
    )


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """The rows as lines, columns padded (numbers to the right), the last one free."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    right = {0, 2, 3}
    out = []
    for r in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=False))
        ]
        out.append(clip(("  " + "  ".join(cells) + "  " + r[-1]).rstrip()))
    return out


def _adds(trial: Any) -> str:
    """`` adds seeds 1,2 to #0`` for a trial queued by --add-seeds."""
    if Attr.SEEDS_OF not in trial.user_attrs:
        return ""
    added = ",".join(str(s) for s in trial.user_attrs[Attr.TRIAL_SEEDS])
    return f" adds seeds {added} to #{trial.user_attrs[Attr.SEEDS_OF]}"
