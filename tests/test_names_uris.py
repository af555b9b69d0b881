"""The shared vocabulary and the URL helpers (cmcr.names, cmcr.uris)."""

from pathlib import Path

import pytest

from cmcr import names, uris


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://alice:S3cr3tPW@db:5432/optuna",
        "http://bob:S3cr3tPW@127.0.0.1:5000",
        "postgresql://alice@db/optuna?password=S3cr3tPW",
        "postgresql://db/optuna?sslmode=require&PASSWORD=S3cr3tPW&x=1",
        "http://host/?token=S3cr3tPW",
        "Traceback: could not connect to mysql://u:S3cr3tPW@h/db (refused)",
    ],
)
def test_redact_hides_every_form_of_url_password(text):
    out = uris.redact(text)
    assert "S3cr3tPW" not in out
    assert uris.MASK in out


def test_redact_keeps_urls_without_secrets():
    for text in ("sqlite:///runs/optuna.db", "postgresql://alice@db:5432/x?sslmode=require"):
        assert uris.redact(text) == text


def test_sqlite_path():
    assert uris.sqlite_path("sqlite:///runs/x.db") == Path("runs/x.db")
    assert uris.sqlite_path("sqlite:////abs/x.db?timeout=5") == Path("/abs/x.db")
    assert uris.sqlite_path("sqlite:///:memory:") is None
    assert uris.sqlite_path("postgresql://h/db") is None


def test_tracking_uri_precedence(monkeypatch):
    monkeypatch.delenv(names.TRACKING_URI_ENV, raising=False)
    assert uris.tracking_uri() == names.DEFAULT_TRACKING_URI
    monkeypatch.setenv(names.TRACKING_URI_ENV, "http://127.0.0.1:1")
    assert uris.tracking_uri() == "http://127.0.0.1:1"
    assert uris.tracking_uri("sqlite:///a.db") == "sqlite:///a.db"


def test_local_keys():
    assert names.is_local_key("tracking.tracking_uri")
    assert names.is_local_key("data.dataroot")
    assert not names.is_local_key("loss.weights.mim")


def test_first_line_of_an_error() -> None:
    from cmcr.errors import first_line

    assert first_line(ValueError("  one\ntwo\n")) == "one"
    assert first_line(ValueError("")) == "ValueError"  # no message: the class
    assert first_line(KeyError(), empty="(no message)") == "(no message)"
    assert first_line(OSError("x" * 300), limit=200) == "x" * 200
