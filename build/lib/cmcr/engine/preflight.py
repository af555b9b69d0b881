"""Checks before any MLflow run, Optuna study or trial exists: the tracking server answers, the
config is valid, every data file a run will read is there.

``cmcr pretrain``, ``cmcr probe`` / ``finetune`` and the sweep's planning call these, so that a
server that is down or a bad file is one line on stderr (exit 2) and the stores stay as they
were. MLflow retries an unanswered request for minutes by default (7 retries, exponential
backoff, 120 s timeout each): the reachability probe bounds that to ``REACH_WAIT_S`` through
MLflow's public settings ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from cmcr.configs import Config, validate_config
from cmcr.errors import TrackingError, Unavailable, first_line
from cmcr.names import REACH_WAIT_S
from cmcr.uris import redact, tracking_uri

_RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
_TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"


def check_tracking_reachable(uri: str, wait_s: int = REACH_WAIT_S) -> None:
    """TrackingError (one line) unless the http(s) tracking server ``uri`` answers in ``wait_s``.

    Stores that are files or databases on this machine are not probed: MLflow opens them itself
    and its errors already name them.
    """
    if not uri.startswith(("http://", "https://")):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        with _bounded_http(wait_s):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except MlflowException as exc:
        status = exc.get_http_status_code()
        if status in _REFUSED:  # it answered: up, but these credentials are turned away
            raise TrackingError(redact(
                f"MLflow tracking server {uri} refused the request (HTTP {status} "
                f"{_REFUSED[status]}): check the credentials ({_CREDENTIALS}) ({_first(exc)})"
            )) from None  # fmt: skip
        raise _unreachable(uri, wait_s, exc) from None
    except OSError as exc:
        raise _unreachable(uri, wait_s, exc) from None


_REFUSED = {401: "Unauthorized", 403: "Forbidden"}
# MLflow's public settings for a server's HTTP authentication
_CREDENTIALS = "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN"


class TrackingUnreachable(TrackingError, Unavailable):
    """The tracking server did not answer (down, restarting, no route): exit UNAVAILABLE_EXIT."""


def _unreachable(uri: str, wait_s: int, exc: BaseException) -> TrackingError:
    return TrackingUnreachable(
        redact(f"MLflow tracking server {uri} unreachable after {wait_s} s ({_first(exc)})")
    )


@contextlib.contextmanager
def _bounded_http(wait_s: int) -> Iterator[None]:
    """No retries and a ``wait_s`` timeout for MLflow's HTTP requests made inside the block."""
    saved = {k: os.environ.get(k) for k in (_RETRIES_ENV, _TIMEOUT_ENV)}
    os.environ[_RETRIES_ENV], os.environ[_TIMEOUT_ENV] = "0", str(wait_s)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _first(exc: BaseException) -> str:
    """The exception's class and first line: MLflow's messages run over many lines."""
    return f"{type(exc).__name__}: {first_line(exc, empty='(no message)')}"


def check_tracking(cfg: Config) -> None:
    """The tracking store of ``cfg`` answers (see ``check_tracking_reachable``).

    The URI is resolved without ``resolve_tracking_uri``, which creates a missing embedded
    store: a check must leave every store as it was.
    """
    check_tracking_reachable(tracking_uri(cfg.tracking.tracking_uri))


def before_pretrain(cfg: Config) -> None:
    """``cmcr pretrain``: the server answers (config and data: ``pipeline._prepare``)."""
    check_tracking(validate_config(cfg))


def before_downstream(cfg: Config) -> None:
    """``cmcr probe`` / ``finetune``: a valid config and a server that answers (the data:
    ``downstream.run_downstream``, after the pre-trained weights are checked)."""
    check_tracking(validate_config(cfg))


def before_sweep(cfg: Config, *, data: bool = True) -> None:
    """A sweep, before its study exists: the tracking server and (``data``) every file a trial
    reads, for pre-training and the downstream evaluation."""
    if data:
        # lazy: the data checks and the pipeline load torch and spconv; the tracking check and
        # `sweeps/run.py --status` need neither
        from cmcr.data import check_downstream_data, check_pretrain_data
        from cmcr.engine.pipeline import check_dataroot

        check_dataroot(cfg)
        check_pretrain_data(cfg)
        check_downstream_data(cfg)
    check_tracking(cfg)
