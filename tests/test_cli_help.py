"""`cmcr --help` lists the commands without importing them (it took 8 s on a loaded machine,
issue 32): torch, MLflow and Optuna load only for the command that is named."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cmcr.cli import COMMANDS

HEAVY = ("torch", "mlflow", "optuna", "pandas", "scipy", "spconv")


def _modules_after(*argv: str, cli: str = "cmcr.cli") -> tuple[str, list[str]]:
    code = (
        "import contextlib, io, json, sys\n"
        f"from {cli} import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        f"    main({list(argv)!r})\n"
        f"print(json.dumps([out.getvalue(), [m for m in {HEAVY!r} if m in sys.modules]]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return tuple(json.loads(done.stdout.splitlines()[-1]))  # type: ignore[return-value]


def test_top_level_help_lists_every_command_and_imports_no_heavy_library() -> None:
    text, loaded = _modules_after("--help")
    assert loaded == []
    for name, (_, help_text) in COMMANDS.items():
        assert name in text and help_text in text


@pytest.mark.parametrize(
    ("command", "flag"), [("pretrain", "--resume"), ("probe", "--pretrained"), ("ui", "--port")]
)
def test_a_named_command_still_shows_its_own_arguments(command: str, flag: str) -> None:
    text, _ = _modules_after(command, "--help")
    assert f"usage: cmcr {command}" in text and flag in text, text


def test_sweep_help_imports_no_heavy_library() -> None:
    """`sweeps/run.py --help` (and every sweep process before it reads data) loads no torch:
    the sweep's time estimate imports the data package only to count scans."""
    text, loaded = _modules_after("--help", cli="cmcr.sweep.cli")
    assert loaded == [] and "--study" in text


def test_sweep_help_groups_slurm_apart() -> None:
    import argparse

    from cmcr.sweep.options import add_arguments

    parser = argparse.ArgumentParser(prog="sweeps/run.py")
    add_arguments(parser)
    text = parser.format_help()
    head, _, slurm = text.partition("SLURM (with --launcher slurm")
    assert slurm and "--study" in head and "--resume" in head and "--storage" in head
    for flag in ("--partition", "--account", "--gpus-per-worker", "--signal", "--cancel"):
        assert flag in slurm and f"  {flag}" not in head, flag
    assert parser.format_usage().count("\n") <= 2  # a short usage line, not 14 lines of flags


def test_list_shows_each_studys_pruner_and_cost_here(smoke_world) -> None:
    from cmcr.sweep import summary

    text = summary.list_studies("smoke", [f"data.dataroot={smoke_world}"])
    heads = [i for i, line in enumerate(text.splitlines()) if not line.startswith(" ")]
    lines = text.splitlines()
    assert len(heads) >= 5
    for i in heads:
        assert lines[i + 1].startswith("    pruner "), lines[i + 1]
    assert "cost here about" in lines[heads[0] + 1] or "cost here about" in text
    nowhere = summary.list_studies("smoke", ["data.dataroot=/no/such/world"])
    assert "the data at /no/such/world could not be read" in nowhere


@pytest.mark.parametrize("command", ["probe", "finetune", "evaluate"])
def test_downstream_set_takes_several_values_and_shows_its_own_example(command: str) -> None:
    from cmcr.cli import build_parser
    from cmcr.configs import set_values
    from cmcr.engine.cli_downstream import SET_EXAMPLE

    base = ["--pretrained", "none"] if command != "evaluate" else ["--run", "r"]
    args = build_parser(command).parse_args(
        [command, *base, "--set", "a.b=1", "c.d=2", "--set", "e.f=3"]
    )
    assert set_values(args.overrides) == [
        "a.b=1",
        "c.d=2",
        "e.f=3",
    ]  # as `cmcr pretrain --set` takes them
    text, _ = _modules_after(command, "--help")
    assert SET_EXAMPLE[command].split("=")[0] in text and "official" in text
    if command == "finetune":
        assert "probe_label_fraction" not in text  # the old example was a probe key


def test_sweep_set_takes_several_values_as_every_command_does() -> None:
    import argparse

    from cmcr.sweep.options import add_arguments, sweep_options, worker_argv

    parser = argparse.ArgumentParser(prog="sweeps/run.py")
    add_arguments(parser)
    args = parser.parse_args(["--study", "s", "--set", "a.b=1", "c.d=2", "--set", "e.f=3"])
    opts = sweep_options(args)
    assert opts.overrides == ["a.b=1", "c.d=2", "e.f=3"]
    argv = worker_argv(opts)  # a spawned worker gets them back one per --set
    assert sweep_options(parser.parse_args(argv)).overrides == opts.overrides


def test_list_with_set_on_the_command_line(smoke_world) -> None:
    """`--list --set data.dataroot=...` as a user types it (the parsed --set is a list of
    lists since --set takes several values: --list failed on it)."""
    from pathlib import Path

    run = Path(__file__).resolve().parents[1] / "sweeps" / "run.py"
    argv = [sys.executable, str(run), "--list", "--preset", "smoke",
            "--set", f"data.dataroot={smoke_world}"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "cost here about" in done.stdout
