"""`liftplace serve` (server.cli): its arguments, and a real server process with an embedded Ray."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from server.cli import register

ROOT = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liftplace")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_serve_arguments() -> None:
    args = _parser().parse_args(["serve"])
    assert (args.host, args.port, args.data_dir, args.log_level) == (None, None, None, "info")  # settings decide
    args = _parser().parse_args(["serve", "--host", "0.0.0.0", "--port", "9001", "--data-dir", "/srv/lp"])
    assert (args.host, args.port, args.data_dir) == ("0.0.0.0", 9001, Path("/srv/lp"))
    assert args.func.__name__ == "_cmd_serve"
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--port", "eighty"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_starts_the_api_the_dispatcher_and_a_local_ray(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DATABASE_URL", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--data-dir",
                             str(tmp_path / "data"), "--log-level", "warning"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                status = httpx.get(f"{base}/api/status", timeout=2).json()
                if status["executor"]:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert status and status["executor"].startswith("embedded Ray at 127.0.0.1:"), status
        assert status["dispatcher"]["running"] is True
        assert ":6379" not in status["executor"]  # never Redis's port
        assert [d["name"] for d in httpx.get(f"{base}/api/datasets").json()] == ["digits"]
        assert httpx.get(f"{base}/docs").status_code == 200
        queue = httpx.get(f"{base}/queue")  # liftplace serve mounts the browser UI
        assert queue.status_code == 200 and "text/html" in queue.headers["content-type"], queue.text[:300]
        assert (tmp_path / "data" / "liftplace.db").is_file()  # the embedded SQLite database, migrated
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert f"API on http://127.0.0.1:{port}" in out


def test_serve_plugs_into_the_liftplace_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lead registers `serve = "server.cli:register"` in the liftplace.commands entry-point group."""
    import importlib.metadata

    from liftplace import cli

    real = importlib.metadata.entry_points

    def entry_points(**kw):
        if kw.get("group") == "liftplace.commands":
            return [importlib.metadata.EntryPoint("serve", "server.cli:register", "liftplace.commands")]
        return real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    args = cli.build_parser().parse_args(["serve", "--port", "8123"])
    assert args.command == "serve" and args.port == 8123 and args.func.__module__ == "server.cli"
