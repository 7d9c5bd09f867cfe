"""The errors of the service layer, and the answers the API gives for them and in place of FastAPI's defaults.

The services (`server.services`) raise `NotFound` (404) and `Conflict` (409), which carry no HTTP
of their own: the handlers here turn them into FastAPI's `{"detail": "..."}` answer.

FastAPI's 422 echoes each error's `input`. Python's JSON parser reads ``NaN``, ``Infinity``
and ``1e400`` as floats, and a JSON answer cannot hold them, so a request with a NaN ratio
used to get a 500 instead of its 422. Here non-finite numbers are echoed as strings, and
bytes that are not UTF-8 as their repr.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by its name ("nan", "inf", "-inf"), bytes decoded or repr'd."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return repr(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class NotFound(LookupError):
    """A resource named in the request does not exist (404)."""

    def __init__(self, what: str, key: object) -> None:
        super().__init__(f"{what} {key!r} not found")


class Conflict(Exception):
    """The request contradicts the resource's state: a name taken, a job already ended (409)."""


async def not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=404, content={"detail": str(exc)})


async def conflict(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=409, content={"detail": str(exc)})


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 (`{"detail": [{"loc", "msg", "type", "input", ...}]}`), always valid JSON."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(json_safe(list(exc.errors())))})


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(NotFound, not_found)
    app.add_exception_handler(Conflict, conflict)
