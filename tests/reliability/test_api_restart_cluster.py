"""Jobs outlive the API in a Ray cluster: the API process is SIGKILLed while two jobs train.

A Ray head of its own (`ray start --head`, token authentication, loopback, its own temp folder)
stands for the cluster; `liftplace serve` joins it with RAY_ADDRESS, as a separate process. Two
jobs train on the cluster when the API is killed with SIGKILL (no shutdown code runs). The jobs
go on training without it. A second `liftplace serve` on the same database re-attaches to both:
the first ends succeeded with one attempt, one start of its worker and one MLflow run (it was
not requeued or restarted); the second is cancelled through the new API and ends "cancelled",
also at its first attempt.

The Ray head is stopped by killing its process group, never with `ray stop` (which stops every
Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.faults_kit import JobFiles, mlflow_runs_of, save_tiny_teacher

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300  # a safety net: about a minute on 2 idle cores
TERMINAL = ("succeeded", "failed", "diverged", "cancelled")
# Tiny jobs: the first ends about a minute after the kill, the second would train for long and is cancelled.
OPTIONS: dict[str, Any] = dict(teacher="tiny", method="outkd", student_ratio=0.5, batch_size=16, fid_samples=100,
                               sample_steps=5, importance="magnitude")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LIFTPLACE_")) and k != "DATABASE_URL"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["MLFLOW_ALLOW_FILE_STORE"] = "true"  # a file store: no SQLite schema check in every worker
    env.update(extra)
    return env


def _stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait_s: float = 20.0) -> None:
    """Stop a process started in its own session, with every process of that session."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


@pytest.fixture()
def ray_head(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A one-node Ray cluster with 2 CPUs on loopback; yields the environment its drivers need."""
    port = _free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    log = (tmp_path / "ray-head.log").open("w")
    # Short temp folder: Ray's socket paths must stay under the OS limit.
    temp = Path(f"/tmp/lp-ray-{os.getpid()}-{port}")
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(port),
         "--num-cpus", "2", "--num-gpus", "0", "--node-ip-address", "127.0.0.1", "--include-dashboard=false",
         "--disable-usage-stats", "--temp-dir", str(temp)],
        env=_env(**auth), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert head.poll() is None, (tmp_path / "ray-head.log").read_text()[-3000:]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.5)
        time.sleep(2)  # the raylet registers after the GCS listens
        yield {"RAY_ADDRESS": address, **auth}
    finally:
        _stop_group(head)
        log.close()
        subprocess.run(["rm", "-rf", str(temp)], check=False)


class Api:
    """`liftplace serve` joined to the cluster, as its own process."""

    def __init__(self, tmp_path: Path, ray_env: dict[str, str], name: str) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = _env(**ray_env, LIFTPLACE_DATABASE_URL=f"sqlite:///{tmp_path / 'server.db'}",
                   LIFTPLACE_TEACHERS_DIR=str(tmp_path / "teachers"),
                   LIFTPLACE_MLFLOW_TRACKING_URI=(tmp_path / "mlruns").as_uri(),
                   LIFTPLACE_MLFLOW_EXPERIMENT="outlive", LIFTPLACE_POLL_INTERVAL="0.2")
        self.log_path = tmp_path / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port), "--data-dir",
             str(tmp_path / "data"), "--log-level", "info"],
            cwd=tmp_path, env=env, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{self.base}/api/ready", timeout=15)  # executor started, earlier jobs recovered
                if ready.status_code == 200:
                    assert ready.json()["checks"]["executor"]["description"].startswith("cluster Ray"), ready.text
                    return
            time.sleep(0.5)
        raise AssertionError(f"the API did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()[-4000:]

    def get(self, path: str, **kw: Any) -> Any:
        r = httpx.get(self.base + path, timeout=30, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        r = httpx.post(self.base + path, json=body, timeout=30)
        assert r.status_code in (200, 201, 202), r.text
        return r.json()

    def kill(self) -> None:
        """SIGKILL: no shutdown code of the API runs."""
        _stop_group(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        _stop_group(self.proc, signal.SIGINT, wait_s=60)


def _wait(what: str, predicate, timeout: float = TIMEOUT_S, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _starts(files: JobFiles) -> list[str]:
    return [line for line in files.lines() if re.search(rf"job {files.job_id} \(\w+, attempt \d+\) starting", line)]


def test_jobs_keep_training_when_the_api_is_killed_and_the_next_api_re_attaches(
        tmp_path: Path, ray_head, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # this process reads the jobs' runs from the file store
    save_tiny_teacher(tmp_path / "teachers")
    api = Api(tmp_path, ray_head, "api-1")
    try:
        api.post("/api/teachers", {"source": "local", "name": "tiny"})
        finishing = api.post("/api/jobs", {**OPTIONS, "seed": 0, "steps": 400, "checkpoint_every": 400})
        cancelled = api.post("/api/jobs", {**OPTIONS, "seed": 1, "steps": 20000, "checkpoint_every": 20000})
        ids = (finishing["id"], cancelled["id"])

        def both_training() -> bool:
            jobs = [api.get(f"/api/jobs/{i}") for i in ids]
            return all(j["status"] == "running" and (j["progress"] or {}).get("step", 0) >= 5 for j in jobs)

        _wait("both jobs to train", both_training)
    except BaseException:
        api.stop()
        raise
    api.kill()

    files = {i: JobFiles(tmp_path / "data", i) for i in ids}
    metrics = files[ids[1]].dir / "metrics.jsonl"  # a line every few steps

    def size() -> int:
        return metrics.stat().st_size if metrics.exists() else 0

    before = size()
    _wait("the long job to go on training without an API", lambda: size() > before, timeout=120)

    api = Api(tmp_path, ray_head, "api-2")
    try:
        executor = api.get("/api/ready")["checks"]["executor"]
        assert executor["jobs_in_ray"] >= 1 and executor["jobs_outlive_server"] is True, executor
        api.post(f"/api/jobs/{ids[1]}/cancel")
        jobs = _wait("both jobs to end", lambda: (js := [api.get(f"/api/jobs/{i}") for i in ids])
                     and all(j["status"] in TERMINAL for j in js) and js)
        done, stopped = jobs
        assert done["status"] == "succeeded", (done["reason"], api.log())
        assert stopped["status"] == "cancelled" and stopped["reason"].startswith("cancelled at step"), stopped
        for job in jobs:
            assert job["attempts"] == 1, job  # re-attached: not requeued, no second attempt
            assert len(_starts(files[job["id"]])) == 1, files[job["id"]].lines()  # its worker started once
            server = api.get(f"/api/jobs/{job['id']}/logs", params={"limit": 10_000})["lines"]
            assert any("re-attached to attempt 1" in line for line in server), server
            assert not any("requeued" in line for line in server), server
            runs = mlflow_runs_of((tmp_path / "mlruns").as_uri(), "outlive", job["id"])
            assert [r.info.run_id for r in runs] == [job["mlflow_run_id"]], runs  # one MLflow run
        assert done["resumed_from_step"] is None, done  # trained through, not resumed from a checkpoint
        assert sum(line.endswith("[server] succeeded") for line in api.get(
            f"/api/jobs/{ids[0]}/logs", params={"limit": 10_000})["lines"]) == 1  # its end recorded once
    finally:
        api.stop()
