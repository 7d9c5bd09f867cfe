"""Retrying MLflow calls: transient errors only (connection, timeout, 5xx, 429), with backoff (tenacity).

A call that fails for another reason (a refused parameter, a deleted run) raises at once. MLflow's
own HTTP retries are turned down (`quiet_mlflow_http_retries`): left at MLflow's defaults (7 retries,
backoff up to 2 minutes, inside every call) they would stack under these and hold a call, or a job
that cannot reach its tracking server, for minutes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from tenacity import Retrying, retry_if_exception, stop_after_delay, stop_any, wait_exponential_jitter

__all__ = ["is_transient", "mlflow_retry", "quiet_mlflow_http_retries", "safe_uri", "RETRY_FOR_S"]

T = TypeVar("T")
RETRY_FOR_S = 10.0  # a call gives up after about this long (server requests; jobs start with their own)
BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 5.0
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# MLflow's HTTP client settings liftplace defaults (an operator's own values win): no retries inside a
# call, and a bounded wait for an answer.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def quiet_mlflow_http_retries() -> None:
    """Default MLflow's HTTP retries to none (this module retries): set once per process, before a client."""
    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _status(exc: BaseException) -> int | None:
    """The HTTP status an MLflow error stands for (MLflow maps its error codes to statuses)."""
    get = getattr(exc, "get_http_status_code", None)
    if get is None:
        return None
    try:
        return int(get())
    except Exception:
        return None


def is_transient(exc: BaseException) -> bool:
    """True for an error that may pass by itself: no connection, a timeout, HTTP 5xx or 429 (also a
    locked SQLite store, which MLflow reports as TEMPORARILY_UNAVAILABLE, 503), in `exc` or its causes."""
    import requests

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout,
                          requests.exceptions.RetryError)):
            return True
        status = _status(e)
        if status is not None and (status in TRANSIENT_STATUS or status >= 500):
            return True
        e = e.__cause__ or e.__context__
    return False


def mlflow_retry(fn: Callable[..., T], *args: Any, retry_for_s: float = RETRY_FOR_S,
                 retry_give_up: Callable[[], bool] | None = None, retry_sleep: Callable[[float], None] | None = None,
                 **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, retried with exponential backoff and jitter while it fails transiently, for
    at most about `retry_for_s` seconds; the last error is raised as is.

    `retry_give_up()`, asked after each failure, ends the retries early when true; `retry_sleep(seconds)`
    replaces the wait between tries (e.g. a wait that a newer piece of work interrupts).
    """
    stop = stop_after_delay(retry_for_s)
    if retry_give_up is not None:
        stop = stop_any(stop, lambda _state: retry_give_up())
    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential_jitter(multiplier=BACKOFF_FIRST_S, max=BACKOFF_MAX_S, jitter=BACKOFF_FIRST_S),
        stop=stop,
        reraise=True,
        **({"sleep": retry_sleep} if retry_sleep is not None else {}),
    )
    return retrying(fn, *args, **kwargs)


def safe_uri(uri: str | None) -> str:
    """A tracking URI fit for a log line or a job's reason: without user name and password."""
    if not uri:
        return "(MLflow's default tracking URI)"
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "(an unparsable tracking URI)"
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
