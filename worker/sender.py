"""A bounded queue of metric points and the background thread that sends them to one MLflow run.

Training only appends (`put` never waits on the tracking server). The thread sends the oldest
points first, in batches of at most 1000 values, every `flush_every_s` seconds or sooner when
enough are waiting. A batch that fails transiently (no connection, 5xx, 429) is retried with
backoff (tenacity) for as long as the job runs, while new points wait behind it: when MLflow is
back, nothing is lost. What cannot be sent is counted, never dropped silently: a batch MLflow
refuses (a permanent error), points beyond `max_values` waiting, and what is still waiting when
`close` gives up.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from worker.history import Point
from worker.retry import is_transient

__all__ = ["MetricSender", "MAX_VALUES_PER_BATCH"]

MAX_VALUES_PER_BATCH = 1000  # MLflow's limit for one log_batch call
FLUSH_AT_VALUES = 900  # send at once when this many values wait
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0


class MetricSender:
    """Sends `Point`s through `send(points)` from a daemon thread; `on_sent(step)` after each success.

    `send` must raise on failure; it is called with whole points, oldest first, and never from two
    threads at once.
    """

    def __init__(self, send: Callable[[list[Point]], None], *, on_sent: Callable[[int], None],
                 max_values: int, flush_every_s: float, name: str = "mlflow-sender"):
        self._send = send
        self._on_sent = on_sent
        self._max_values = max_values
        self._flush_every_s = flush_every_s
        self._pending: deque[Point] = deque()
        self._pending_values = 0
        self._cond = threading.Condition()
        self._wake = threading.Event()  # close() cuts the backoff sleep under way short
        self._deadline: float | None = None  # set by close(): give up retrying after it
        self._last_send = time.monotonic()
        self.unsent_values = 0  # refused by MLflow or beyond max_values
        self.unsent_steps: list[int] = []  # steps of the points counted in unsent_values
        self.sent_values = 0
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- the training side -------------------------------------------------------------------------

    def put(self, point: Point) -> None:
        """Queue a point (never blocks); beyond `max_values` waiting it is counted as unsent."""
        with self._cond:
            if self._pending_values + len(point.values) > self._max_values:
                self._count_unsent([point], "the queue is full (MLflow unreachable for long)")
                return
            self._pending.append(point)
            self._pending_values += len(point.values)
            if self._pending_values >= FLUSH_AT_VALUES:
                self._cond.notify()

    def pending(self) -> list[Point]:
        """The points not yet confirmed sent, oldest first (a snapshot)."""
        with self._cond:
            return list(self._pending)

    def close(self, timeout_s: float) -> list[Point]:
        """Send what waits, for at most `timeout_s`; stop the thread; return the points left unsent."""
        with self._cond:
            self._deadline = time.monotonic() + timeout_s
            self._cond.notify()
        self._wake.set()
        self._thread.join(timeout_s + 5.0)
        with self._cond:
            left = list(self._pending)
            self._pending.clear()
            self._pending_values = 0
        return left

    # --- the thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._send_with_retry(batch)
            except Exception as exc:
                if is_transient(exc):  # only when closing: the batch stays pending, close() returns it
                    return
                with self._cond:
                    self._drop(len(batch))
                    self._count_unsent(batch, f"MLflow refused them: {type(exc).__name__}: {exc}")
                continue
            with self._cond:
                self._drop(len(batch))
                self.sent_values += sum(len(p.values) for p in batch)
            self._on_sent(batch[-1].step)

    def _next_batch(self) -> list[Point] | None:
        """Wait until a batch is due (or closing); the oldest whole points up to the batch limit."""
        with self._cond:
            while True:
                closing = self._deadline is not None
                if not self._pending and closing:
                    return None
                due = time.monotonic() - self._last_send >= self._flush_every_s
                if self._pending and (closing or due or self._pending_values >= FLUSH_AT_VALUES):
                    break
                self._cond.wait(timeout=self._flush_every_s)
            self._last_send = time.monotonic()
            batch, size = [], 0
            for point in self._pending:
                if batch and size + len(point.values) > MAX_VALUES_PER_BATCH:
                    break
                batch.append(point)
                size += len(point.values)
            return batch

    def _send_with_retry(self, batch: list[Point]) -> None:
        retrying = Retrying(retry=retry_if_exception(is_transient),
                            wait=wait_exponential_jitter(multiplier=BACKOFF_FIRST_S, max=BACKOFF_MAX_S,
                                                         jitter=BACKOFF_FIRST_S),
                            stop=self._past_deadline, sleep=self._sleep, reraise=True)
        retrying(self._send, batch)

    def _past_deadline(self, state: RetryCallState) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _sleep(self, seconds: float) -> None:
        deadline = self._deadline
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - time.monotonic()))
        if self._wake.wait(seconds):  # close() cut this sleep short; later ones run their course
            self._wake.clear()

    def _drop(self, n: int) -> None:
        for _ in range(n):
            self._pending_values -= len(self._pending.popleft().values)

    def _count_unsent(self, points: list[Point], why: str) -> None:
        self.unsent_values += sum(len(p.values) for p in points)
        self.unsent_steps.extend(p.step for p in points)
        if len(self.errors) < 20:  # the first few reasons are enough for the job's log
            self.errors.append(f"mlflow: {sum(len(p.values) for p in points)} metric values (steps "
                               f"{points[0].step}..{points[-1].step}) not sent: {why}")
