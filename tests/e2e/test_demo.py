"""The one-command demo, for real: MLflow server, embedded Ray, API + web UI, a study to its table.

Runs `liftplace demo --preset smoke` (the quick preset's pipeline with test-sized models) as a
user would: the dashboard and MLflow answer while it serves, Ctrl-C stops every process it
started, and a second run with the same data directory reuses the teachers and the study.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

LIFTPLACE = str(Path(sys.executable).with_name("liftplace"))
RUN_TIMEOUT = 600.0  # seconds; the smoke study takes ~1-3 min on 2 cores


class Demo:
    """`liftplace demo` in a subprocess, its output (stdout + stderr) read line by line."""

    def __init__(self, *args: str, cwd: Path):
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI",
                                                                  "DATABASE_URL", "LIFTPLACE_API_TOKEN")}
        self.proc = subprocess.Popen([LIFTPLACE, "demo", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            for part in line.split("\r"):  # tqdm redraws with carriage returns
                self._queue.put(part.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = RUN_TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.lines[-60:]))

    def output(self) -> str:
        while True:
            try:
                line = self._queue.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return "\n".join(self.lines)

    def descendants(self) -> set[int]:
        """Every process below the demo (Ray's, MLflow's), by parent pid."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        found, todo = set(), [self.proc.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status


def test_demo_runs_a_study_to_its_table_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    assert Path(LIFTPLACE).exists(), f"the liftplace console script is not installed next to {sys.executable}"
    data = tmp_path / "demo-data"
    demo = Demo("--preset", "smoke", "--data-dir", str(data), "--port", "0", "--mlflow-port", "0", cwd=tmp_path)
    try:
        urls = demo.wait_for(r"API and web UI at (http://127\.0\.0\.1:\d+)\s+MLflow UI at (http://127\.0\.0\.1:\d+)",
                             timeout=180)
        api, mlflow = urls.group(1), urls.group(2)
        dashboard = demo.wait_for(r"dashboard: (http://\S+/studies/\d+)", timeout=120).group(1)
        # reachable while the study runs
        assert _get(f"{api}/api/status") == 200
        assert _get(f"{mlflow}/health") == 200
        demo.wait_for(r"## Study \d+ 'smoke'")
        demo.wait_for(r"finished in [\d.]+ min")
        demo.wait_for(r"serving until Ctrl-C")
        assert _get(dashboard) == 200
        started = demo.descendants()
        assert started, "the demo started no processes?"

        demo.proc.send_signal(signal.SIGINT)
        assert demo.proc.wait(timeout=90) == 130
        out = demo.output()
        assert "demo stopped" in out
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [p for p in started if _alive(p)]
        assert not left, f"processes left running after Ctrl-C: {left}"
        table = out[out.index("## Study"):]
        grid = table[table.index("\nmethod "):].strip().split("\n\n")[0].splitlines()  # the compact table
        rows = [line.split()[0] for line in grid]
        assert "outkd" in rows and "lift+place+featkd" in rows and max(len(line) for line in grid) <= 120
        assert "smoke test: checks the pipeline only" in out  # the label goes with the numbers
        # the teacher's own FID beside the students', with how it was measured
        assert re.search(r"Teachers' own FID:\n  smoke-tiny\s+[\d.]+ \(\d+ samples, \d+ DDIM steps\)", table)
    finally:
        demo.kill()

    # Again on the same data: teachers and study are reused, nothing is trained again.
    again = Demo("--preset", "smoke", "--data-dir", str(data), "--port", "0", "--mlflow-port", "0",
                 "--exit-when-done", cwd=tmp_path)
    try:
        assert again.proc.wait(timeout=300) == 0
        out = again.output()
        assert "teacher 'smoke-tiny': reusing" in out and "study 'smoke': reusing study" in out
        assert "training queued" not in out and "submitted as study" not in out
        assert "## Study" in out
    finally:
        again.kill()
