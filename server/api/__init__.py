"""REST routers, one per resource, and the dependencies they share (session, settings)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from server.db import get_session
from server.settings import Settings

SessionDep = Annotated[Session, Depends(get_session)]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def wake_dispatcher(request: Request) -> None:
    """Let the dispatcher act now on a new or cancelled job instead of at its next round."""
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.wake()


def not_found(what: str, key: object) -> HTTPException:
    return HTTPException(status_code=404, detail=f"{what} {key!r} not found")


def conflict(detail: str) -> HTTPException:
    return HTTPException(status_code=409, detail=detail)
