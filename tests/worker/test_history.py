"""The bounded MLflow history: points per metric, window means, spikes in min/max, exact final values,
the checkpoint journal of a resumed job (no MLflow needed: a client double records the batches)."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest

from liftplace import defaults
from worker.history import Point, Window, log_every_for
from worker.spec import LOGGED_STEP_FILE
from worker.tracking import PENDING_FILE, JobTracker


class RecordingClient:
    """Stands in for MlflowClient: keeps every metric sent; `down` makes log_batch fail like a stopped server."""

    def __init__(self):
        self.metrics: list = []
        self.down = False
        self.calls = 0
        self.lock = threading.Lock()

    def log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=True):
        with self.lock:
            self.calls += 1
            if self.down:
                raise ConnectionError("connection refused")
            self.metrics.extend(metrics)

    def history(self, key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in self.metrics if m.key == key)


def _tracker(tmp_path: Path, client, **kw) -> JobTracker:
    return JobTracker(client, "run0", tmp_path, resumed=kw.pop("resumed", False),
                      last_logged_step=kw.pop("last_logged_step", 0), **kw)


def _loss(step: int) -> float:
    return 1.0 + 1.0 / step


@pytest.mark.parametrize("steps", [1, 10, 1999, 2000, 2001, 20_000, 500_000, 10_000_000])
def test_log_every_bounds_the_points_per_metric(steps):
    every = log_every_for(steps)
    points = steps // every + (steps % every != 0)  # the grid, and the last step when off it
    assert points <= defaults.MLFLOW_MAX_POINTS
    assert every == 1 or points > defaults.MLFLOW_MAX_POINTS // 2  # not coarser than needed


def test_a_window_is_the_mean_with_min_and_max_of_losses_and_grad_norm():
    w = Window()
    for step, (loss, slope) in enumerate([(1.0, 0.5), (9.0, 0.7), (2.0, float("nan"))], start=1):
        w.add(step, {"loss_total": loss, "grad_norm": loss / 10, "slope_mean": slope}, timestamp_ms=step)
    p = w.point()
    assert (p.step, p.timestamp_ms) == (3, 3)
    assert p.values["loss_total"] == pytest.approx(4.0)
    assert (p.values["loss_total_min"], p.values["loss_total_max"]) == (1.0, 9.0)
    assert p.values["grad_norm_max"] == pytest.approx(0.9)
    assert p.values["slope_mean"] == pytest.approx(0.6)  # the NaN is left out of the mean
    assert "slope_mean_max" not in p.values  # only losses and the gradient norm get a spread
    exact = w.point(exact=True)
    assert exact.values["loss_total"] == 2.0 and exact.values["loss_total_max"] == 9.0
    assert Window.from_dict(json.loads(json.dumps(w.to_dict()))).point() == p
    assert Window().point() is None


def test_one_step_windows_log_the_values_alone():
    w = Window()
    w.add(7, {"loss_total": 3.0}, timestamp_ms=0)
    assert w.point().values == {"loss_total": 3.0}


def test_a_20000_step_run_logs_at_most_2000_points_a_spike_shows_in_max_and_the_end_is_exact(tmp_path):
    client = RecordingClient()
    tracker = _tracker(tmp_path, client)
    total, spike_step = 20_000, 12_345
    tracker.begin(0, total)
    assert tracker.log_every == 10
    for step in range(1, total + 1):
        loss = 1000.0 if step == spike_step else _loss(step)
        tracker.log_step(step, {"loss_total": loss, "grad_norm": 0.5, "w": 2.0})
    tracker.log_metrics({"fid_digits": 12.5, "bad": float("nan")}, step=total)
    assert tracker.drain(30) == 0

    history = client.history("loss_total")
    assert len(history) == 2000 and [s for s, _ in history] == list(range(10, total + 1, 10))
    assert {len(client.history(k)) for k in ("loss_total_min", "loss_total_max", "grad_norm", "w")} == {2000}
    maxes = dict(client.history("loss_total_max"))
    assert maxes[12_350] == 1000.0 and max(v for s, v in maxes.items() if s != 12_350) <= _loss(1)
    means = dict(history)
    assert means[12_350] == pytest.approx((1000.0 + sum(_loss(s) for s in range(12_341, 12_350))) / 10)
    assert means[100] == pytest.approx(sum(_loss(s) for s in range(91, 101)) / 10)
    assert means[total] == _loss(total)  # the final value is exact, not a mean
    assert client.history("fid_digits") == [(total, 12.5)] and not client.history("bad")
    assert (tmp_path / LOGGED_STEP_FILE).read_text() == str(total)
    assert not (tmp_path / PENDING_FILE).exists() and tracker.history_note() is None


def test_the_interval_can_be_set_per_job(tmp_path):
    client = RecordingClient()
    tracker = _tracker(tmp_path, client, log_every=1)
    tracker.begin(0, 30)
    for step in range(1, 31):
        tracker.log_step(step, {"loss_total": 1.0})
    tracker.drain(30)
    assert len(client.history("loss_total")) == 30 and not client.history("loss_total_max")


def test_training_goes_on_while_mlflow_is_down_and_the_points_go_when_it_is_back(tmp_path, monkeypatch):
    import worker.sender as sender

    monkeypatch.setattr(sender, "BACKOFF_MAX_S", 0.05)
    monkeypatch.setattr(sender, "FLUSH_AT_VALUES", 10)
    client = RecordingClient()
    client.down = True
    tracker = _tracker(tmp_path, client, log_every=2)
    tracker.begin(0, 100)
    for step in range(1, 101):
        tracker.log_step(step, {"loss_total": float(step)})  # never waits, although every send fails
    assert client.metrics == []
    client.down = False
    assert tracker.drain(30) == 0
    assert [s for s, _ in client.history("loss_total")] == list(range(2, 101, 2))


def test_what_mlflow_refuses_or_cannot_take_is_counted(tmp_path, monkeypatch):
    import worker.sender as sender
    import worker.tracking as tracking

    monkeypatch.setattr(tracking, "MAX_PENDING_VALUES", 30)
    client = RecordingClient()
    client.down = True
    tracker = _tracker(tmp_path, client, log_every=1)
    tracker.begin(0, 50)
    for step in range(1, 51):
        tracker.log_step(step, {"loss_total": 1.0})  # 30 wait, 20 are refused by the full queue
    assert tracker.drain(0.5) == 50  # MLflow still down at the end: the 30 waiting are counted too
    assert "not sent" in tracker.history_note() and any("queue is full" in e for e in tracker.errors)
    journal = json.loads((tmp_path / PENDING_FILE).read_text())
    assert [p["step"] for p in journal["pending"]] == list(range(1, 31))  # kept for a later attempt

    class Refusing(RecordingClient):
        def log_batch(self, *a, **kw):
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            raise MlflowException("bad metric", error_code=INVALID_PARAMETER_VALUE)  # HTTP 400: not retried

    monkeypatch.setattr(sender, "BACKOFF_MAX_S", 0.05)
    (tmp_path / "b").mkdir()
    refused = _tracker(tmp_path / "b", Refusing(), log_every=1)
    refused.begin(0, 3)
    for step in (1, 2, 3):
        refused.log_step(step, {"loss_total": 1.0})
    assert refused.drain(5) == 3 and any("refused" in e for e in refused.errors)


def test_a_checkpoint_keeps_the_unsent_points_and_the_window_for_the_resumed_job(tmp_path):
    (tmp_path / "a").mkdir()
    client = RecordingClient()
    client.down = True
    first = _tracker(tmp_path / "a", client, log_every=4)
    first.begin(0, 20)
    for step in range(1, 11):
        first.log_step(step, {"loss_total": float(step)})
    first.checkpoint(10)  # points 4 and 8 unsent, steps 9-10 in the open window
    journal = json.loads((tmp_path / "a" / PENDING_FILE).read_text())
    assert [p["step"] for p in journal["pending"]] == [4, 8] and journal["window"]["first_step"] == 9
    first._sender.close(0)  # the worker dies here: nothing else reaches MLflow

    client.down = False
    again = _tracker(tmp_path / "a", client, resumed=True, log_every=4, journal=journal)
    again.begin(10, 20)  # resumes from the checkpoint at 10
    for step in range(11, 21):
        again.log_step(step, {"loss_total": float(step)})
    assert again.drain(30) == 0 and again.history_gaps == []
    history = dict(client.history("loss_total"))
    assert sorted(history) == [4, 8, 12, 16, 20]
    assert history[12] == pytest.approx((9 + 10 + 11 + 12) / 4)  # the window spans the restart


def test_steps_lost_between_a_checkpoint_and_its_journal_are_recorded(tmp_path):
    client = RecordingClient()
    tracker = _tracker(tmp_path, client, resumed=True, last_logged_step=8, log_every=4,
                       journal={"step": 8, "pending": [], "window": None})
    tracker.begin(12, 20)  # the checkpoint at 12 was saved, its journal never written: 9-12 are gone
    assert tracker.history_gaps == [(9, 12)]
    tracker.log_step(5, {"loss_total": 1.0})  # an already logged step of the earlier attempt: skipped
    for step in range(13, 21):
        tracker.log_step(step, {"loss_total": 1.0})
    tracker.drain(30)
    assert [s for s, _ in client.history("loss_total")] == [16, 20]
    assert "steps 9..12" in tracker.history_note()


def test_points_round_trip_through_the_journal():
    p = Point(5, 123, {"loss_total": 0.5})
    assert Point.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert math.isfinite(p.values["loss_total"])


def test_unsent_points_past_the_resumed_checkpoint_are_not_sent_twice(tmp_path):
    """An attempt that ended with MLflow away kept points up to step 12; the next resumes from the checkpoint at
    8 and trains 9-12 again: the old points of 4 and 8 are sent, 12 comes from the new training only."""
    old = [Point(s, 0, {"loss_total": -1.0}).to_dict() for s in (4, 8, 12)]
    client = RecordingClient()
    tracker = _tracker(tmp_path, client, resumed=True, log_every=4, journal={"step": 12, "pending": old})
    tracker.begin(8, 16)
    for step in range(9, 17):
        tracker.log_step(step, {"loss_total": float(step)})
    assert tracker.drain(30) == 0 and tracker.history_gaps == []
    assert client.history("loss_total") == [(4, -1.0), (8, -1.0), (12, 10.5), (16, 16.0)]


def test_a_job_that_ends_before_training_still_sends_the_earlier_attempts_points(tmp_path):
    client = RecordingClient()
    tracker = _tracker(tmp_path, client, resumed=True, journal={"pending": [Point(3, 0, {"w": 1.0}).to_dict()]})
    assert tracker.drain(30) == 0  # e.g. the teacher could not be loaded this time
    assert client.history("w") == [(3, 1.0)]
