"""A real Ray cluster on this one machine, for the cluster-mode tests: a head, more nodes (one may be made
unable to see the test's files), `liftplace serve` joined to it and a real MLflow tracking server.

Every process is started in a session of its own and stopped by killing that session's process group,
never with `ray stop` (which stops every Ray on the machine, a service's embedded one included). Ports
are free loopback ports; each node has its own short temp folder (Ray's socket paths must stay under the
OS limit).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from server.demo import MlflowServer, pick_port

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
TERMINAL = ("succeeded", "failed", "diverged", "cancelled")


def free_port() -> int:
    return pick_port(0)


def cluster_env(**extra: str) -> dict[str, str]:
    """This process's environment without its Ray and liftplace settings, the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LIFTPLACE_")) and k != "DATABASE_URL"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["MLFLOW_ALLOW_FILE_STORE"] = "true"  # a file store: no SQLite schema check in every worker
    env.update(extra)
    return env


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait_s: float = 20.0) -> None:
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


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """The first truthy value of `predicate()`, polled every `every` s; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on {port}:\n{log.read_text()[-3000:]}")


class RayNode:
    """One `ray start --block` process (a head, or a node joining `address`), in its own session.

    With `hide`, the node runs in a mount namespace of its own where a fresh tmpfs covers each of those
    folders: it cannot see what this process writes there, nor this process what it writes (another host,
    as far as files go). Its environment is `env` (its job workers inherit it).
    """

    def __init__(self, log: Path, *, env: dict[str, str], address: str | None = None, num_cpus: int = 2,
                 hide: tuple[Path, ...] = (), port: int | None = None) -> None:
        self.port = port or free_port()
        self.temp = Path(f"/tmp/lp-ray-{os.getpid()}-{self.port}")
        args = [RAY, "start", "--block", "--num-cpus", str(num_cpus), "--num-gpus", "0",
                "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--temp-dir", str(self.temp),
                "--dashboard-agent-listen-port", str(free_port())]  # the default (52365) is one per machine
        if address is None:
            args += ["--head", "--port", str(self.port), "--include-dashboard=false"]
        else:
            args += ["--address", address, "--node-manager-port", str(self.port)]
        if hide:  # mount a tmpfs over each hidden folder, then become the Ray node
            mounts = " && ".join(f'mount -t tmpfs lp-hidden "${i + 1}"' for i in range(len(hide)))
            args = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                    f'{mounts} && shift {len(hide)} && exec "$@"', "sh", *map(str, hide), *args]
        self.log_path = log
        self._log = log.open("w")
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            _wait_port(self.port, self.proc, log)
            time.sleep(2)  # the raylet registers after its port listens
        except BaseException:
            self.kill()
            raise

    def mount_namespace(self) -> str:
        return os.readlink(f"/proc/{self.proc.pid}/ns/mnt")

    def kill(self) -> None:
        """SIGKILL the node: its session's processes and, for a hidden node, anything else left in its
        mount namespace (a host that dies)."""
        namespace = None
        with contextlib.suppress(OSError):
            namespace = self.mount_namespace()
        stop_group(self.proc, signal.SIGKILL)
        if namespace is not None and namespace != os.readlink("/proc/self/ns/mnt"):
            for pid in os.listdir("/proc"):
                with contextlib.suppress(OSError, ValueError):
                    if pid.isdigit() and os.readlink(f"/proc/{pid}/ns/mnt") == namespace:
                        os.kill(int(pid), signal.SIGKILL)
        self._log.close()
        subprocess.run(["rm", "-rf", str(self.temp)], check=False)


@contextlib.contextmanager
def ray_head(tmp_path: Path, num_cpus: int = 2, **env: str) -> Iterator[tuple[RayNode, dict[str, str]]]:
    """A Ray head on loopback with token authentication; yields it and the environment its drivers need."""
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    head = RayNode(tmp_path / "ray-head.log", env=cluster_env(**auth, **env), num_cpus=num_cpus)
    try:
        yield head, {"RAY_ADDRESS": f"127.0.0.1:{head.port}", **auth}
    finally:
        head.kill()


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """A real `mlflow server` (SQLite store, artifacts proxied by the server); yields its URL."""
    server = MlflowServer(folder)
    try:
        server.start(timeout=120)
        yield server.url
    finally:
        server.stop()


class Api:
    """`liftplace serve` joined to the cluster, as its own process (SQLite under `tmp_path`)."""

    def __init__(self, tmp_path: Path, ray_env: dict[str, str], name: str, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        settings = {"LIFTPLACE_DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}",
                    "LIFTPLACE_TEACHERS_DIR": str(tmp_path / "teachers"),
                    "LIFTPLACE_MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(),
                    "LIFTPLACE_MLFLOW_EXPERIMENT": "cluster", "LIFTPLACE_POLL_INTERVAL": "0.2", **env}
        self.log_path = tmp_path / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port), "--data-dir",
             str(tmp_path / "data"), "--log-level", "info"],
            cwd=tmp_path, env=cluster_env(**ray_env, **settings), stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{self.base}/api/ready", timeout=15)  # executor started, earlier jobs recovered
                if ready.status_code == 200:
                    assert ready.json()["checks"]["executor"]["description"].startswith("cluster Ray"), ready.text
                    return
            time.sleep(0.5)
        self.stop()
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

    def job(self, job_id: int) -> dict[str, Any]:
        return self.get(f"/api/jobs/{job_id}")

    def logs(self, job_id: int) -> list[str]:
        return self.get(f"/api/jobs/{job_id}/logs", params={"limit": 10_000})["lines"]

    def wait_ended(self, job_ids: list[int], timeout: float) -> list[dict[str, Any]]:
        return wait_for(f"jobs {job_ids} to end", lambda: (js := [self.job(i) for i in job_ids])
                        and all(j["status"] in TERMINAL for j in js) and js, timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown code of the API runs."""
        stop_group(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        stop_group(self.proc, signal.SIGINT, wait_s=60)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
