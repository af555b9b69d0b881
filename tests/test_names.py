"""Names are identifiers, never paths or shell text (issue 28): the one name rule, the sweep and
report CLIs refusing before anything exists, and the SLURM script with planted values."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cmcr.errors import CMCRError
from cmcr.guard import OUT_MARKER, check_name, check_out_dir, path_slug
from cmcr.results import report
from cmcr.sweep import cli, slurm
from cmcr.sweep.space import builtin_studies, parse_study_file

PLANT = "x\ntouch PWNED\n#"  # the study YAML of the issue: a command on its own line
SUBST = "a$(touch PWNED)b"  # a command substitution


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---- the rule ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["mask_ratio", "benchmark_kitti", "three-seeds", "it's", "v1.2", "A" * 100, "x"]
)
def test_names_used_so_far_stay_valid(name):
    assert check_name(name, "--name") == name


def test_every_builtin_study_name_is_valid():
    for path in builtin_studies().values():
        check_name(parse_study_file(path).name, str(path))


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", ".hidden", "../../../escaped", "a/b", "a\\b", "a b", PLANT, SUBST, "ü",
     "x" * 101, "x" * 10_000, "-x", "x;y", 'say "hi"'],
)  # fmt: skip
def test_names_that_are_paths_or_shell_text_are_refused(name):
    with pytest.raises(CMCRError, match="^--name .*: expected a name: 1 to 100 characters"):
        check_name(name, "--name")


def test_the_error_is_one_short_line_even_for_a_long_name():
    with pytest.raises(CMCRError) as err:
        check_name("x" * 10_000 + "\n", "--name")
    assert "\n" not in str(err.value) and len(str(err.value)) < 200


def test_report_folders_never_leave_reports():
    assert [path_slug(n) for n in ("..", ".", "", "it's", "a/../b")] == [
        "_.",
        "_",
        "_",
        "it_s",
        "a_.._b",
    ]


# ---- the sweep CLI refuses before any store, folder or script exists --------------------------
def _sweep(tmp_path: Path, monkeypatch, *argv: str) -> int:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return cli.main(["--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--preset", "smoke",
                     "--pruner", "none", *argv])  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--name", ".."], "--name '..'"),
        (["--name", "../../../escaped"], "--name '../../../escaped'"),
        (["--name", "x" * 10_000], "--name 'xxx"),
        (["--name", PLANT, "--launcher", "slurm"], "--name 'x\\ntouch"),
        (["--set", 'tracking.output_dir="runs\\ntouch PWNED"', "--launcher", "slurm"],
         "tracking.output_dir"),
    ],
)  # fmt: skip
def test_a_bad_name_is_one_line_exit_2_and_the_tree_unchanged(tmp_path, monkeypatch, capsys,
                                                              argv, field):  # fmt: skip
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    before = _tree(tmp_path)
    assert _sweep(work, monkeypatch, "--study", "mask_ratio", *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sweeps/run.py: error: ") and field in err[0]
    assert _tree(tmp_path) == before  # no store, no runs/ or reports/ folder, nothing escaped


def test_a_study_yaml_name_with_a_command_is_refused(tmp_path, monkeypatch, capsys):
    study = tmp_path / "shared.yaml"
    study.write_text('name: "x\\ntouch PWNED\\n#"\nparams:\n  data.mask_ratio: {type: grid, '
                     "choices: [0.5]}\n")  # fmt: skip
    before = _tree(tmp_path)
    assert _sweep(tmp_path, monkeypatch, "--study", str(study), "--launcher", "slurm") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'name' 'x\\ntouch PWNED\\n#': expected a name" in err[0]
    assert _tree(tmp_path) == before


# ---- the SLURM job script --------------------------------------------------------------------
def _script(field: str, value: str, log_dir: Path) -> str:
    """The job script with ``value`` planted in ``field``."""
    s = slurm.SlurmSettings(
        **{field: value} if field in ("partition", "account", "time", "mem") else {}
    )
    name = value if field == "name" else "cmcr-x"
    if field == "log_dir":
        log_dir = log_dir / value
    argv = ["--study", value if field == "argv" else "mask_ratio", "--worker"]
    return slurm.job_script(s, 2, name, log_dir, argv)


def _run_script(text: str, tmp_path: Path) -> Path:
    """bash -n, then run it with srun and scontrol stubbed (srun writes its argv, one a line)."""
    bash = shutil.which("bash")
    path = tmp_path / "job.sbatch"
    path.write_text(text)
    subprocess.run([bash, "-n", str(path)], check=True, timeout=30)
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    (stubs / "srun").write_text(f'#!{bash}\nprintf "%s\\n" "$@" > "{tmp_path}/srun.args"\n')
    (stubs / "scontrol").write_text(f"#!{bash}\nexit 0\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {"PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_ARRAY_JOB_ID": "7",
           "SLURM_ARRAY_TASK_ID": "0", "SLURM_JOB_ID": "8"}  # fmt: skip
    subprocess.run([bash, str(path)], env=env, cwd=tmp_path, check=True, timeout=30,
                   capture_output=True)  # fmt: skip
    return tmp_path / "srun.args"


FIELDS = ("name", "log_dir", "argv", "partition", "account", "time", "mem")


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize(
    "value", [PLANT, SUBST, 'it\'s "q" #c \\'], ids=["newline", "subst", "quotes"]
)
def test_a_planted_value_never_runs_in_the_job_script(tmp_path, field, value):
    (tmp_path / "logs").mkdir()
    try:
        text = _script(field, value, tmp_path / "logs")
    except slurm.SlurmError as exc:  # refused: a control character, or a value SLURM cannot take
        assert "\n" not in str(exc) and "control characters" in str(exc) and "\n" in value
        assert field != "argv"  # argv is shell-quoted, a newline included
        return
    args = _run_script(text, tmp_path)
    assert not list(tmp_path.rglob("PWNED")), text  # the planted command did not run
    if field == "argv":  # the worker gets the value verbatim
        assert value in args.read_text()
    for line in text.splitlines()[1:]:  # after the shebang: directives, comments, the body
        if line.startswith("#SBATCH "):
            assert "\n" not in line


def test_sbatch_directives_are_quoted_for_sbatch():
    assert slurm.directive_value("x", "/shared/runs/slurm/mask_ratio/%A_%a.log") == (
        "/shared/runs/slurm/mask_ratio/%A_%a.log"
    )
    assert slurm.directive_value("x", '/r/it\'s a #1 "x"\\') == '"/r/it\'s a \\#1 \\"x\\"\\\\"'
    with pytest.raises(slurm.SlurmError, match="control characters"):
        slurm.directive_value("tracking.output_dir", "/r\ntouch PWNED")


# ---- report folders --------------------------------------------------------------------------
@pytest.mark.parametrize("out", ["/", "/etc", "/usr", "~"])
def test_report_out_refuses_a_root_or_system_folder(tmp_path, monkeypatch, capsys, out):
    monkeypatch.chdir(tmp_path)
    top = sorted(os.listdir("/"))
    before = _tree(tmp_path)
    rc = report.main(["--out", out, "--overwrite", "--no-log",
                      "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out {out}: a filesystem root, home or system folder" in err[0]
    assert _tree(tmp_path) == before and sorted(os.listdir("/")) == top


def test_report_out_refuses_a_folder_it_did_not_make(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "pruned.csv").write_text("keep me\n")
    (mine / "index.html").write_text("mine\n")
    before = _tree(tmp_path)
    rc = report.main(["--out", str(mine), "--no-log",
                      "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a non-empty folder this tool did not make" in err[0]
    assert "--overwrite" in err[0] and _tree(tmp_path) == before
    assert (mine / "pruned.csv").read_text() == "keep me\n"


def test_report_out_takes_a_new_empty_or_marked_folder(tmp_path):
    assert check_out_dir(tmp_path / "new", "--out", False) == (tmp_path / "new").resolve()
    assert check_out_dir(tmp_path, "--out", False) == tmp_path.resolve()  # empty
    (tmp_path / "index.html").write_text("old report\n")
    with pytest.raises(CMCRError, match="did not make"):
        check_out_dir(tmp_path, "--out", False)
    assert check_out_dir(tmp_path, "--out", True) == tmp_path.resolve()
    (tmp_path / OUT_MARKER).write_text("")
    assert check_out_dir(tmp_path, "--out", False) == tmp_path.resolve()
    (tmp_path / "file").write_text("")
    with pytest.raises(CMCRError, match="not a folder"):
        check_out_dir(tmp_path / "file", "--out", True)
