"""ASGI middleware of the app: a request body size limit.

Every request body the API takes is small (a study is a few hundred bytes of JSON); a huge one
is refused with 413 before the app reads it, so it can neither fill the server's memory nor
reach the JSON parser.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """413 for a request whose body is over `max_bytes`, whether it announces its length or not.

    A Content-Length over the limit is refused at once, before a byte of the body is read. A
    body without one (chunked) is read up to the limit into memory, then handed to the app;
    one byte more and it is refused instead.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = -1
            if n < 0:
                await _reply(send, 400, f"Content-Length: {length.decode('latin-1')!r} is not a byte count")
                return
            if n > self.max_bytes:
                await _reply(send, 413, self._too_large(f"{n} bytes is"))
                return
            await self.app(scope, receive, send)  # the server delivers exactly n bytes
            return
        # No length announced: buffer up to the limit.
        buffered: list[Message] = []
        size = 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await _reply(send, 413, self._too_large("the body is"))
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)

    def _too_large(self, what: str) -> str:
        return f"request body: {what} over the limit of {self.max_bytes} bytes (LIFTPLACE_MAX_BODY_BYTES)"


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json"),
                                          (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    start: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})
