"""Redaction that parses (issue 28): every shape a URL secret took past the old regexes, and
the ``--set`` spellings that took one past the filter keeping secrets off a worker's argv.

``FORMS`` is shared with tests/test_leaks.py, whose 2-worker sweep plants the five forms.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from cmcr import uris
from cmcr.names import Attr
from cmcr.sweep import options, runner, summary
from cmcr.sweep.options import SweepOptions, worker_args, worker_env

S = "Zq7SeCrEt28"
# the five forms the adversarial review got through (``{s}``: the secret)
FORMS = {
    "slash-password": "postgresql://user:{s}/x@host:5432/db",  # SQLAlchemy reads pw '{s}/x'
    "empty-user": "http://:{s}@host:5000",
    "token-as-user": "http://{s}@host:5000",
    "query-param": "https://host/api?x=1&auth_token={s}",
    "percent-encoded": "postgresql://user@host/db?pass%77ord={s}",  # the key is 'password'
}
# a URL with no secret is left exactly as it is
PLAIN = (
    "sqlite:///runs/optuna.db",
    "postgresql://alice@db:5432/x?sslmode=require",
    "http://127.0.0.1:5000/#/experiments/1/runs/ab12",
    "http://[::1]:5000",
    "file:///data/a@b/c",
    "expected key=value, e.g. loss.weights.mim=0.5",
)


@pytest.fixture(params=sorted(FORMS))
def url(request: pytest.FixtureRequest) -> str:
    return FORMS[request.param].format(s=S)


def test_redact_masks_the_secret_of_every_form(url: str) -> None:
    out = uris.redact(url)
    assert S not in out and uris.MASK in out, out
    assert uris.redact(out) == out  # redacting twice changes nothing


@pytest.mark.parametrize(
    "wrap",
    [
        'Traceback (most recent call last):\n  File "x.py", line 1\nOperationalError: {u} refused',
        "{{'storage': '{u}', 'n': 2}}",  # a repr: quotes around the URL
        '{{"storage": "{u}"}}',  # JSON
        "tracking_uri: '{u}'\nexperiment: x\n",  # YAML
        "a=sqlite:///x.db,b={u} (at 12:00)",  # two URLs in one token
    ],
)
def test_redact_works_on_whole_texts(url: str, wrap: str) -> None:
    text = wrap.format(u=url)
    out = uris.redact(text)
    assert S not in out and uris.MASK in out, out
    before, after = text.split(url)
    assert out.startswith(before) and out.endswith(after)  # the text around it stays


def test_a_printed_link_never_holds_a_secret(url: str) -> None:
    link = uris.public_url(url)
    assert S not in link and "@" not in link and "?" not in link, link
    assert link.split("://")[1].startswith("host")


@pytest.mark.parametrize("text", PLAIN)
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert uris.redact(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a database URL keeps its plain user name, nothing else
        ("postgresql://alice@db/x", "postgresql://alice@db/x"),
        ("postgresql://alice:pw@db/x", "postgresql://alice:***@db/x"),
        ("postgresql+psycopg2://u:p@ss/w@h/db", "postgresql+psycopg2://u:***@h/db"),
        ("postgresql://u:pa?ss#x@h/db", "postgresql://u:***@h/db"),
        ("mysql://u%3Apw@h/db", "mysql://***@h/db"),  # an encoded ':' is no plain user
        # any other scheme: the userinfo is the credential (GitHub: TOKEN:x-oauth-basic)
        ("https://TOKEN:x-oauth-basic@github.com/o/r", "https://***@github.com/o/r"),
        ("http://u:pw@h:1/", "http://***@h:1/"),
        # the '@' itself encoded, a URL encoded inside another, a fragment's token
        ("postgresql://u%3Apw%40h/db", "postgresql://***%40h/db"),
        (
            "http://h/cb?next=postgresql%3A%2F%2Fu%3Apw%40h%2Fdb&x=1",
            "http://h/cb?next=postgresql%3A%2F%2Fu%3A***%40h%2Fdb&x=1",
        ),
        ("http://h/#access_token=abc&x=1", "http://h/#access_token=***&x=1"),
        ("http://h/?Client-Secret=abc&sig=d", "http://h/?Client-Secret=***&sig=***"),
        # outside a URL: libpq's key=value form
        ("host=h password=pw dbname=x", "host=h password=*** dbname=x"),
    ],
)
def test_redact_forms(text: str, expected: str) -> None:
    assert uris.redact(text) == expected


def test_redact_tree_keeps_the_shape() -> None:
    value = {"fixed": {"tracking.tracking_uri": FORMS["token-as-user"].format(s=S), "n": 3}}
    value["list"] = [FORMS["empty-user"].format(s=S), 1.5, None]
    out = uris.redact_tree(value)
    assert S not in repr(out) and out["fixed"]["n"] == 3 and out["list"][1:] == [1.5, None]
    assert json.loads(json.dumps(out)) == out


def test_redact_stays_linear_on_long_text() -> None:
    import time

    blob = "a" * 200_000
    start = time.perf_counter()
    for text in (f"http://{blob}", f"{blob}://x", f"{blob}@{blob}://u:p@h"):
        uris.redact(text)
    assert time.perf_counter() - start < 2


# ---- --set spellings: off the worker's argv, into its environment -----------------------
SPELLINGS = {
    "dotted": "tracking.tracking_uri={u}",
    "key-with-spaces": " tracking.tracking_uri ={u}",
    "mapping": "tracking={{tracking_uri: '{u}', experiment: e28}}",
    "yaml-escaped": 'tracking.tracking_uri="{escaped}"',
    "other-key": "data.dataroot={u}",
}


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_no_set_spelling_puts_a_secret_on_a_worker_argv(url, spelling, monkeypatch) -> None:
    escaped = url.replace(":", "\\x3a")  # YAML reads it back as the URL
    item = SPELLINGS[spelling].format(u=url, escaped=escaped)
    opts = SweepOptions(study="mask_ratio", overrides=["train.max_steps=2", item])
    argv = worker_args(opts)
    assert not any(S in a for a in argv), argv
    assert argv[argv.index("--set") + 1] == "train.max_steps=2"
    env = worker_env(opts, base={})
    if spelling != "other-key":  # the worker's tracking URI, as the config will read it
        assert env["CMCR_SWEEP_TRACKING_URI"] == env["MLFLOW_TRACKING_URI"] == url
    for key, value in env.items():  # the worker reads every override back, in order
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    back = options.sweep_options(parser.parse_args(argv))
    assert back.overrides == opts.overrides and back.storage == opts.storage


def test_overrides_without_secrets_stay_on_the_argv() -> None:
    opts = SweepOptions(study="s", overrides=["train.max_steps=2", "tracking.experiment=x"])
    assert worker_args(opts).count("--set") == 2
    assert "CMCR_SWEEP_SETS" not in worker_env(opts, base={"CMCR_SWEEP_SETS": "stale"})


# ---- --storage from the environment -----------------------------------------------------
def _parse(argv: list[str]) -> SweepOptions:
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    return options.sweep_options(parser.parse_args(argv))


def test_the_storage_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("CMCR_SWEEP_STORAGE", raising=False)
    assert _parse(["--study", "s"]).storage == "sqlite:///runs/optuna.db"
    monkeypatch.setenv("CMCR_SWEEP_STORAGE", FORMS["slash-password"].format(s=S))
    assert _parse(["--study", "s"]).storage == FORMS["slash-password"].format(s=S)
    assert _parse(["--study", "s", "--storage", "sqlite:///a.db"]).storage == "sqlite:///a.db"
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "$CMCR_SWEEP_STORAGE" in text and "$MLFLOW_TRACKING_URI" in text


# ---- the study's definition, --list ---------------------------------------------------------
def _study_file(folder: Path, uri: str) -> Path:
    path = folder / "leaky.yaml"
    path.write_text(
        "name: leaky\ndirection: maximize\nsampler: tpe\nn_trials: 2\n"
        "params:\n  data.mask_ratio: {type: float, low: 0.1, high: 0.9}\n"
        f"fixed:\n  tracking.tracking_uri: '{uri}'\n  train.max_steps: 2\n"
    )
    return path


def test_the_stored_definition_and_overrides_are_redacted(tmp_path, url, monkeypatch) -> None:
    monkeypatch.delenv("CMCR_SWEEP_STORAGE", raising=False)
    study = _study_file(tmp_path, url)
    other = FORMS["token-as-user"].format(s=S + "x")
    plan = runner.plan_sweep(_parse([
        "--study", str(study), "--preset", "smoke", "--storage", f"sqlite:///{tmp_path}/o.db",
        "--set", f"tracking={{tracking_uri: '{other}', output_dir: {tmp_path / 'runs'}}}",
    ]))  # fmt: skip
    attrs = plan.compat_attrs()
    assert S not in json.dumps(attrs, default=str), attrs
    assert attrs[Attr.DEFINITION]["fixed"]["train.max_steps"] == 2
    assert plan.base.tracking.tracking_uri == other  # the config itself keeps the real URI


def test_list_prints_no_secret(tmp_path, url, monkeypatch) -> None:
    path = _study_file(tmp_path, url)
    monkeypatch.setattr(summary, "builtin_studies", lambda: {"leaky": path})
    text = summary.list_studies()
    assert "fixed tracking.tracking_uri = " in text and S not in text, text


def test_a_study_stored_before_redaction_still_resumes_and_its_error_hides_the_secret(
    tmp_path, url, monkeypatch
) -> None:
    """A study written by an older version holds its `fixed:` URI in the clear: a resume with
    the same file matches it, and a mismatch's error line shows it redacted."""
    monkeypatch.delenv("CMCR_SWEEP_STORAGE", raising=False)
    argv = ["--study", str(_study_file(tmp_path, url)), "--storage", f"sqlite:///{tmp_path}/o.db",
            "--set", f"tracking.tracking_uri=sqlite:///{tmp_path}/m.db"]  # fmt: skip
    plan = runner.plan_sweep(_parse([*argv, "--preset", "smoke"]))

    class Old:  # the attributes as the older version stored them
        user_attrs = {**plan.compat_attrs(), Attr.DEFINITION: plan.spec.to_dict()}

    assert S in json.dumps(Old.user_attrs, default=str)
    runner.check_compatible(plan, Old)  # same definition: no error
    other = runner.plan_sweep(_parse([*argv, "--preset", "demo"]))
    Old.user_attrs[Attr.PRESET] = "demo"
    Old.user_attrs[Attr.DEFINITION] = {**plan.spec.to_dict(), "n_trials": 3}
    with pytest.raises(Exception, match="different definition") as err:
        runner.check_compatible(other, Old)
    assert S not in str(err.value)
