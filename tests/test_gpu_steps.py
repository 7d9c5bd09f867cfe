"""bench/gpu_steps.py end to end on the CPU: its `--quick` smoke path on the test-sized `smoke` study preset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from liftplace.studies import get_study_preset
from tests.scripts_kit import load_script


def _gpu_steps():
    return load_script("bench/gpu_steps.py", "gpu_steps")


def test_quick_run_measures_every_step_of_the_preset(tmp_path: Path) -> None:
    gpu_steps = _gpu_steps()
    threads = torch.get_num_threads()
    try:
        out = gpu_steps.main(["--device", "cpu", "--quick", "--presets", "smoke", "--warmup", "0", "--repeats", "1",
                              "--methods", "outkd", "--threads", "1", "--json", str(tmp_path / "steps.json"),
                              "--markdown", str(tmp_path / "steps.md")])
    finally:
        torch.set_num_threads(threads)
    rows = out["rows"]
    assert [r for r in rows if "error" in r] == []
    preset = get_study_preset("smoke")
    teachers = [t.name for t in preset.teachers]
    methods = preset.variants[0].methods
    distilled = {(r["model"], r["method"]) for r in rows if r["kind"] == "distill step"}
    assert distilled == {(t, m) for t in teachers for m in methods}  # "outkd" is one of the preset's own
    assert {r["model"] for r in rows if r["kind"] == "teacher step"} == set(teachers)
    assert sum(r["kind"] == "DDIM batch" for r in rows) == len(teachers)  # a student per teacher (no fixed one)
    for r in rows:
        for key in ("median_ms", "min_ms", "max_ms"):
            assert math.isfinite(r[key]) and r[key] > 0, (r, key)
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
    (proj,) = out["projections"]
    assert proj["complete"] and proj["distill_jobs"] == preset.jobs
    assert math.isfinite(proj["total_h"]) and proj["total_h"] > proj["distill_h"] > 0
    # the Markdown names the device and says it is measured, with a row per method; the JSON holds the rows
    md = (tmp_path / "steps.md").read_text()
    assert "Measured (not estimated)" in md and out["environment"]["device_name"] in md
    for m in methods:
        assert f"| {m} |" in md
    assert len(json.loads((tmp_path / "steps.json").read_text())["rows"]) == len(rows)


def test_projection_adds_up_the_jobs_and_says_when_a_measurement_is_missing() -> None:
    gpu_steps = _gpu_steps()
    preset = get_study_preset("smoke")  # 10 steps, 32 FID samples of 4 DDIM steps; teachers trained for 20 steps
    s = gpu_steps.Settings(device=torch.device("cpu"), warmup=0, repeats=1, batch=None, sample_batch=16,
                           sample_steps=2, fid_batch=8, methods=(), quick=True)
    teachers = [t.name for t in preset.teachers]
    rows = [{"preset": "smoke", "kind": "teacher step", "model": t, "median_ms": 50.0} for t in teachers]
    rows += [{"preset": "smoke", "kind": "distill step", "model": t, "method": m, "median_ms": 100.0}
             for t in teachers for m in preset.variants[0].methods]
    rows.append({"preset": "smoke", "kind": "DDIM batch", "model": "s", "median_ms": 40.0, "ddim_steps": 2})
    p = gpu_steps.project(preset, rows, s)
    fid_s = 2 * 4 * 0.020  # 2 batches of 16 images x 4 DDIM steps x 20 ms per step
    assert p["complete"] and math.isclose(p["fid_h"] * 3600, fid_s)
    assert math.isclose(p["run_h"] * 3600, 10 * 0.1 + fid_s)
    assert math.isclose(p["distill_h"] * 3600, preset.jobs * (10 * 0.1 + fid_s))
    assert math.isclose(p["teacher_h"] * 3600, len(teachers) * 20 * 0.05)
    assert math.isclose(p["total_h"], p["distill_h"] + p["teacher_h"])
    partial = gpu_steps.project(preset, rows[1:], s)  # a teacher step not measured (or failed)
    assert not partial["complete"] and partial["total_h"] is None and partial["teacher_h"] is None
    assert math.isclose(partial["distill_h"], p["distill_h"])
