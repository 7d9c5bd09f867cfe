"""`liftplace study run` and its client against a live service (uvicorn on loopback, fake workers).

The service runs with a ThreadExecutor whose FakeRunner acts out teacher training and the
distillation jobs in milliseconds; the client speaks real HTTP to it (urllib).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from liftplace import cli_study
from liftplace.client import (
    ServiceClient,
    ServiceError,
    ensure_teachers,
    find_study,
    follow,
    study_jobs,
    submit_preset,
)
from liftplace.studies import get_study_preset
from server.app import create_app
from server.demo import ApiServer
from server.executors import ThreadExecutor
from server.settings import Settings
from tests.server.server_testkit import MLFLOW_UI, FakeRunner


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_service(db_url: str, tmp_path: Path) -> Iterator[tuple[str, FakeRunner]]:
    runner = FakeRunner()
    port = _free_port()
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url, mlflow_ui_url=MLFLOW_UI,
                        poll_interval=0.05, host="127.0.0.1", port=port)
    server = ApiServer(create_app(settings, ThreadExecutor(runner, max_workers=4), tracking=False),
                       "127.0.0.1", port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", runner
    finally:
        server.stop()


def test_submit_follow_and_reuse(live_service: tuple[str, FakeRunner]) -> None:
    url, runner = live_service
    client = ServiceClient(url, token="")
    preset = get_study_preset("smoke")
    notes: list[str] = []
    runs = submit_preset(client, preset, note=notes.append)
    assert [r.reused for r in runs] == [False]
    assert any("training queued" in n for n in notes), notes
    studies = follow(client, runs, teachers=[t.name for t in preset.teachers], poll=0.1, progress=False,
                     timeout=60)
    assert studies[0]["status"] == "ended"
    assert studies[0]["status_counts"]["succeeded"] == preset.jobs
    # every teacher was trained once, then every distillation job ran once
    kinds = [s.kind for s in runner.specs]
    assert kinds.count("teacher") == len(preset.teachers) and kinds.count("distill") == preset.jobs
    table = client.table(runs[0].study_id, "md")
    assert "| outkd |" in table and "smoke-tiny" in table
    # the paged listings over real HTTP: every job once, whatever the page size
    jobs = study_jobs(client, runs[0].study_id)
    assert len(jobs) == preset.jobs and len({j["id"] for j in jobs}) == preset.jobs
    assert [j["id"] for j in client.pages("/api/jobs", page_size=2, study=runs[0].study_id)] == [j["id"] for j in jobs]
    assert find_study(client, str(runs[0].study_id), match_id=True)["name"] == runs[0].name

    # A second run reuses the teachers and the study: nothing new is submitted or run.
    notes.clear()
    again = submit_preset(client, preset, note=notes.append)
    assert [r.reused for r in again] == [True] and again[0].study_id == runs[0].study_id
    assert sum("reusing" in n for n in notes) == len(preset.teachers) + 1, notes
    assert all("None" not in n and "parameters" in n for n in notes if n.startswith("teacher")), notes
    follow(client, again, poll=0.1, progress=False, timeout=10)
    assert len(runner.specs) == len(preset.teachers) + preset.jobs


def test_reusing_a_teacher_in_training_names_its_job() -> None:
    """A teacher still training has no size yet: the note names its job instead of 'None parameters'."""
    preset = get_study_preset("smoke")

    class Teachers:
        def get(self, path: str) -> list[dict]:
            assert path == "/api/teachers"
            return [{"name": t.name, "status": "training", "parameters": None, "job_id": 7 + i}
                    for i, t in enumerate(preset.teachers)]

    notes: list[str] = []
    assert ensure_teachers(Teachers(), preset, notes.append) == []  # nothing new queued
    assert notes == [f"teacher {t.name!r}: reusing (training, job {7 + i})" for i, t in enumerate(preset.teachers)]


def test_cli_study_run_prints_the_table(live_service: tuple[str, FakeRunner],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = live_service
    code = cli_study.main(["study", "run", "smoke", "--api", url, "--name", "cli-smoke", "--timeout", "60"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "submitted as study" in out and "## Study" in out and "cli-smoke" in out
    assert "smoke test: checks the pipeline only" in out  # the preset's label goes with its numbers


def test_cli_study_run_prints_the_compact_table_or_with_wide_every_try(
        live_service: tuple[str, FakeRunner], capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = live_service
    argv = ["study", "run", "smoke", "--api", url, "--name", "cli-table", "--timeout", "60"]
    assert cli_study.main(argv) == 0
    out = capsys.readouterr().out
    table = out[out.index("\nmethod "):].strip().splitlines()
    assert table[0].split() == ["method", "smoke-tiny", "smoke-tiny-p50"]
    assert [line.split()[0] for line in table[2:4]] == ["outkd", "lift+place+featkd"]
    assert all(line.split()[1:] == ["10.50", "±", "0.71", "*"] * 2 for line in table[2:4])  # fid = 10 + seed
    assert "fid_digits, lower is better" in out and "over 2 seeds" in out and "Try 1" not in out
    assert max(map(len, table)) <= 120
    assert cli_study.main([*argv, "--wide"]) == 0  # the same study, followed again: every try this time
    wide = capsys.readouterr().out
    assert "Try 1" in wide and "| outkd | 10.00 | 11.00 |" in wide


def test_cli_study_run_unreachable_service(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_study.main(["study", "run", "smoke", "--api", f"http://127.0.0.1:{_free_port()}",
                           "--connect-timeout", "1"])
    assert code == 1
    assert "cannot reach the service" in capsys.readouterr().err


def test_service_error_names_the_field(live_service: tuple[str, FakeRunner]) -> None:
    url, _ = live_service
    client = ServiceClient(url, token="")
    body = get_study_preset("smoke").study_requests("bad")[0] | {"student_ratio": 1.5}
    with pytest.raises(ServiceError) as err:
        client.post("/api/studies", body)
    assert err.value.status == 422 and "student_ratio" in err.value.detail


def test_study_show_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_study.main(["study", "list"]) == 0
    listing = capsys.readouterr().out
    assert "quick" in listing and "stability" in listing and "[GPU]" in listing
    assert cli_study.main(["study", "show", "quick"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["studies"][0]["name"] == "quick" and shown["teachers"]
    # --seeds: a subset of the preset's cells (a re-run on another machine), the rest of the request unchanged
    assert cli_study.main(["study", "show", "stability", "--seeds", "1", "0", "1"]) == 0
    (study,) = json.loads(capsys.readouterr().out)["studies"]
    assert study["seeds"] == [1, 0] and study == {**get_study_preset("stability").study_requests("stability")[0],
                                                  "seeds": [1, 0]}
    with pytest.raises(SystemExit):
        cli_study.main(["study", "show", "stability", "--seeds", "-1"])
    assert "--seeds: expected a seed (an integer >= 0), got -1" in capsys.readouterr().err


def test_a_preset_registers_its_shipped_teachers_and_never_mixes_them_with_trained_ones(
        live_service: tuple[str, FakeRunner], capsys: pytest.CaptureFixture[str]) -> None:
    url, runner = live_service
    client = ServiceClient(url, token="")
    assert cli_study.main(["study", "run", "stability", "--api", url, "--no-wait"]) == 0
    out = capsys.readouterr().out
    preset = get_study_preset("stability")
    assert all(f"teacher {t.name!r}: registered (shipped, " in out for t in preset.teachers), out
    listed = {t["name"]: t for t in client.get("/api/teachers")}
    assert all(listed[t.name]["source"] == "shipped" and listed[t.name]["status"] == "ready" for t in preset.teachers)
    assert "teacher" not in [s.kind for s in runner.specs]  # nothing trained
    notes: list[str] = []
    assert ensure_teachers(client, preset, notes.append) == [] and all("reusing" in n for n in notes)
    with pytest.raises(ServiceError, match="is the shipped one"):
        ensure_teachers(client, preset, retrain=True)


def test_cli_study_run_retrain_trains_the_shipped_teachers_by_their_recipe(
        live_service: tuple[str, FakeRunner], capsys: pytest.CaptureFixture[str]) -> None:
    url, runner = live_service
    argv = ["study", "run", "ablation-coarse", "--api", url, "--no-wait"]
    assert cli_study.main([*argv, "--retrain"]) == 0
    assert "'stability-digits-s': training queued" in capsys.readouterr().out
    teachers = ServiceClient(url, token="").get("/api/teachers")
    assert [(t["name"], t["source"], t["preset"]) for t in teachers] == [("stability-digits-s", "preset", "digits-s")]
    plan = get_study_preset("ablation-coarse").teachers[0]
    job = ServiceClient(url, token="").get(f"/api/jobs/{teachers[0]['job_id']}")
    assert job["kind"] == "teacher" and job["steps"] == plan.train["steps"]
    assert {k: job["options"][k] for k in plan.train if k != "steps"} == {k: v for k, v in plan.train.items()
                                                                            if k != "steps"}
    # without --retrain the same service's trained teacher is not taken for the shipped one
    assert cli_study.main(argv) == 1
    err = capsys.readouterr().err
    assert "exists with source 'preset'" in err and "--retrain" in err
    assert cli_study.main(["study", "show", "ablation-coarse", "--retrain"]) == 0
    assert json.loads(capsys.readouterr().out)["teachers"][0]["source"] == "preset"
