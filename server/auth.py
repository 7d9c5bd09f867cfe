"""Authentication: one shared API token (LIFTPLACE_API_TOKEN), presented as a bearer token or a cookie.

- Unset token (the default): no authentication; `liftplace serve` then binds 127.0.0.1 only.
- Token set: every write (POST/PUT/PATCH/DELETE of the API, every web form) needs it;
  reads need it too when LIFTPLACE_AUTH_READS is true.
- A script sends ``Authorization: Bearer <token>``; a browser logs in once
  (``POST /api/auth/login`` with ``{"token": ...}``) and gets the HttpOnly cookie
  `AUTH_COOKIE` (SameSite=Strict, so another site cannot make the browser submit a form with
  it; Secure when the request came over https).

The cookie holds a value derived from the token (HMAC-SHA256), not the token itself, so a
leaked cookie does not reveal the token a script uses. Changing the token logs every browser out.
Both are compared in constant time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from server.settings import Settings

AUTH_COOKIE = "liftplace_token"
_COOKIE_CONTEXT = b"liftplace login cookie v1"  # what the cookie value is an HMAC of

# Documented in the OpenAPI schema (the "Authorize" button of /docs); the checks are ours, below.
_bearer = HTTPBearer(auto_error=False, description="LIFTPLACE_API_TOKEN as a bearer token")
_cookie = APIKeyCookie(name=AUTH_COOKIE, auto_error=False, description="set by POST /api/auth/login")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
CookieDep = Annotated[str | None, Depends(_cookie)]


def cookie_value(token: str) -> str:
    """The login cookie's value for `token` (hex HMAC-SHA256; a function of the token only)."""
    return hmac.new(token.encode(), _COOKIE_CONTEXT, hashlib.sha256).hexdigest()


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def authenticated(request: Request) -> bool:
    """Whether `request` carries the configured token (bearer header or login cookie).

    False when no token is configured: there is nothing to authenticate against.
    """
    settings = _settings(request)
    if settings.api_token is None:
        return False
    token = settings.api_token.get_secret_value()
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode()):
        return True
    cookie = request.cookies.get(AUTH_COOKIE)
    return cookie is not None and hmac.compare_digest(cookie.encode(), cookie_value(token).encode())


def _unauthorized(what: str) -> HTTPException:
    return HTTPException(
        status_code=401,
        detail=f"authentication required: {what} need the API token (LIFTPLACE_API_TOKEN), sent as "
               "'Authorization: Bearer <token>' or by logging in at POST /api/auth/login",
        headers={"WWW-Authenticate": "Bearer"},
    )


# The two dependencies are async: they do no I/O, so FastAPI runs them on the event loop instead of
# handing each request to a worker thread once more.
async def require_write(request: Request, _bearer: BearerDep = None, _cookie: CookieDep = None) -> None:
    """Dependency of every write endpoint and web form: 401 unless the token is presented (when one is set)."""
    if _settings(request).writes_need_token and not authenticated(request):
        raise _unauthorized("writes")


async def require_read(request: Request, _bearer: BearerDep = None, _cookie: CookieDep = None) -> None:
    """Dependency of every read endpoint and page: 401 unless the token is presented, when LIFTPLACE_AUTH_READS."""
    if _settings(request).reads_need_token and not authenticated(request):
        raise _unauthorized("reads")


# --- /api/auth ---------------------------------------------------------------------------------------


class LoginRequest(BaseModel):
    token: str = Field(min_length=1, max_length=4096, description="the API token (LIFTPLACE_API_TOKEN)")


class AuthStatus(BaseModel):
    writes_need_token: bool
    reads_need_token: bool
    authenticated: bool = Field(description="this request carries the token (false when none is configured)")


router = APIRouter(prefix="/api/auth", tags=["auth"])


def _status(request: Request, authenticated_now: bool | None = None) -> AuthStatus:
    settings = _settings(request)
    return AuthStatus(writes_need_token=settings.writes_need_token, reads_need_token=settings.reads_need_token,
                      authenticated=authenticated(request) if authenticated_now is None else authenticated_now)


@router.get("/status", response_model=AuthStatus, summary="Whether reads and writes need the token, and whether "
            "this request carries it")
def auth_status(request: Request) -> AuthStatus:
    return _status(request)


@router.post("/login", response_model=AuthStatus, summary="Check the token and set the HttpOnly login cookie")
def login(body: LoginRequest, request: Request, response: Response) -> AuthStatus:
    settings = _settings(request)
    if settings.api_token is None:  # nothing to log in to; no cookie
        return _status(request, authenticated_now=False)
    token = settings.api_token.get_secret_value()
    if not hmac.compare_digest(body.token.encode(), token.encode()):
        raise HTTPException(status_code=401, detail="token: wrong API token", headers={"WWW-Authenticate": "Bearer"})
    response.set_cookie(AUTH_COOKIE, cookie_value(token), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return _status(request, authenticated_now=True)


@router.post("/logout", response_model=AuthStatus, summary="Clear the login cookie")
def logout(request: Request, response: Response) -> AuthStatus:
    response.delete_cookie(AUTH_COOKIE, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                           path="/")
    # A bearer header on this same request still authenticates it; the cookie no longer will.
    scheme, _, _ = request.headers.get("authorization", "").partition(" ")
    return _status(request, authenticated_now=authenticated(request) if scheme.lower() == "bearer" else False)
