"""bench/bench_artifacts.py end to end on the test-sized `tiny` preset: on a local SQLite store (quick), and
through a real `mlflow server --serve-artifacts` (slow: the server's start alone takes ~20 s)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.scripts_kit import load_script


def _bench():
    return load_script("bench/bench_artifacts.py", "bench_artifacts")


def _check(out: dict, markdown: Path) -> None:
    assert len(out["rows"]) == 10
    assert all(r.seconds >= 0 for r in out["rows"])
    sizes = {r.what: r.bytes for r in out["rows"] if r.bytes is not None}
    teacher_sizes = {v for k, v in sizes.items() if "teacher" in k and "checkpoint" not in k}
    assert len(teacher_sizes) == 1  # digest, registration and download move the same folder
    distill_ckpt = {v for k, v in sizes.items() if k.startswith("distillation job checkpoint")}
    teacher_ckpt = {v for k, v in sizes.items() if k.startswith("teacher job checkpoint")}
    assert len(distill_ckpt) == len(teacher_ckpt) == 1
    # weights + EMA + Adam's two moments: about 4x the teacher's weights; the 0.9-pruned student's far less
    assert teacher_ckpt.pop() > 3 * teacher_sizes.pop() > distill_ckpt.pop()
    assert "second `resolve_teacher` (cache hit)" in [r.what for r in out["rows"]]
    text = markdown.read_text()
    assert out["table"] in text and "| what | size MB | seconds | MB/s |" in text
    assert not out["root"].exists()  # the temporary folder is removed without --keep


def test_the_benchmark_runs_on_a_local_store(tmp_path: Path) -> None:
    out = _bench().main(["--preset", "tiny", "--store", "sqlite", "--dir", str(tmp_path),
                         "--markdown", str(tmp_path / "artifacts.md")])
    _check(out, tmp_path / "artifacts.md")
    assert out["server_url"] is None


@pytest.mark.slow
def test_the_benchmark_runs_through_the_proxied_artifact_store(tmp_path: Path) -> None:
    out = _bench().main(["--preset", "tiny", "--dir", str(tmp_path), "--markdown", str(tmp_path / "artifacts.md")])
    _check(out, tmp_path / "artifacts.md")
    assert any("`mlflow-artifacts:` URI" in line for line in out["setup"])  # proxied, not a shared folder
    url = out["server_url"]
    assert url.startswith("http://127.0.0.1:")
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])),
                                                                          timeout=5):
        pass  # the server is stopped
