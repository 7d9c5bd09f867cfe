"""Readiness: whether this API can do its work now (GET /api/ready; the compose health checks ask it).

`GET /api/status` stays cheap (no database, no Ray: the load benchmark's floor) and answers as long
as the process does; readiness asks every dependency and fails (503, with the reasons) when

- the database does not answer ``SELECT 1``;
- the dispatcher thread is dead, has not started its executor (Ray not joined yet, or joining
  failed: its error), or has not ended a round for LIFTPLACE_DISPATCHER_STALL_S seconds (stuck);
- the executor is broken: for Ray, not connected or the GCS does not answer (`RayExecutor.health`);
- a Ray node runs another Ray or Python version than this API (by node: id, address, versions).

Every check that leaves the process runs in a thread of its own, bounded by `timeout_s`; a check
still running from an earlier request is not started again (it fails, saying how long it has
hung), so a dead database or GCS never piles up threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.engine import Engine

from server.dispatcher import Dispatcher
from server.executors import Executor
from server.settings import Settings

CHECK_TIMEOUT_S = 10.0  # each dependency's bound; the compose health checks allow 20 s in all


class ReadyAnswer(BaseModel):
    """The answer of GET /api/ready (200 when ready, 503 otherwise)."""

    ready: bool
    reasons: list[str] = Field(description="why it is not ready (empty when ready)")
    checks: dict[str, Any] = Field(description="what each check found: database, dispatcher, executor")


class BoundedCheck:
    """Runs a callable in a daemon thread and waits at most `timeout_s` for it; one run at a time."""

    def __init__(self, name: str, timeout_s: float) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._since = 0.0

    def __call__(self, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """(True, fn's value) or (False, why: its exception, or that it did not return in time)."""
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["value"] = fn()
            except Exception as exc:
                result["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]

        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False, f"the previous {self.name} check has not returned for " \
                              f"{time.monotonic() - self._since:.0f}s"
            self._thread = threading.Thread(target=run, name=f"liftplace-ready-{self.name}", daemon=True)
            self._since = time.monotonic()
            self._thread.start()
            thread = self._thread
        thread.join(self.timeout_s)
        if thread.is_alive():
            return False, f"no answer within {self.timeout_s:g}s"
        if "error" in result:
            return False, result["error"]
        return True, result.get("value")


def dispatcher_problem(settings: Settings, dispatcher: Dispatcher, now: float) -> str | None:
    """Why the dispatcher cannot dispatch (None: it can, or it is off by LIFTPLACE_DISPATCH=false)."""
    if not settings.dispatch:
        return None
    last_error = f": {dispatcher.error}" if dispatcher.error else ""
    if not dispatcher.running:
        return f"the dispatcher thread is not running{last_error}"
    if not dispatcher.started:
        return f"the dispatcher has not started its executor yet{last_error or ' (starting)'}"
    if dispatcher.last_round_at is not None and now - dispatcher.last_round_at > settings.dispatcher_stall_s:
        return f"the dispatcher is stuck: no round has ended for {now - dispatcher.last_round_at:.0f}s " \
               f"(LIFTPLACE_DISPATCHER_STALL_S={settings.dispatcher_stall_s:g})"
    if dispatcher.error:
        return f"the dispatcher's last round failed: {dispatcher.error}"
    return None


def _select_one(engine: Engine) -> str:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return "ok"


class Readiness:
    """The readiness checks of one app (its database, dispatcher and executor)."""

    def __init__(self, settings: Settings, engine: Engine, dispatcher: Dispatcher, executor: Executor,
                 timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self.settings, self.engine, self.dispatcher, self.executor = settings, engine, dispatcher, executor
        self._database = BoundedCheck("database", timeout_s)
        self._executor = BoundedCheck("executor", timeout_s)

    def check(self) -> ReadyAnswer:
        reasons: list[str] = []
        checks: dict[str, Any] = {}
        ok, found = self._database(lambda: _select_one(self.engine))
        checks["database"] = found if ok else {"error": found}
        if not ok:
            reasons.append(f"the database does not answer: {found}")
        problem = dispatcher_problem(self.settings, self.dispatcher, time.monotonic())
        checks["dispatcher"] = "off (LIFTPLACE_DISPATCH=false)" if not self.settings.dispatch else \
            {"error": problem} if problem else "ok"
        if problem:
            reasons.append(problem)
        if not self.dispatcher.started:
            checks["executor"] = "not started"
            return ReadyAnswer(ready=not reasons, reasons=reasons, checks=checks)
        ok, found = self._executor(self.executor.health)
        checks["executor"] = {"description": self.dispatcher.executor_description,
                              **(found if ok and isinstance(found, dict) else {"error": found})}
        if not ok:
            reasons.append(f"the executor ({self.dispatcher.executor_description}) is broken: {found}")
        elif found.get("version_mismatches"):
            nodes = found["version_mismatches"]
            reasons.append(f"{len(nodes)} Ray node(s) run another Ray or Python version than this API: "
                           + "; ".join(n["detail"] for n in nodes))
        return ReadyAnswer(ready=not reasons, reasons=reasons, checks=checks)
