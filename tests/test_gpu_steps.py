"""bench/gpu_steps.py end to end on the CPU: its `--quick` smoke path on the test-sized `smoke` study preset."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import torch

from liftplace.studies import get_study_preset

ROOT = Path(__file__).resolve().parents[1]


def _gpu_steps():
    spec = importlib.util.spec_from_file_location("gpu_steps", ROOT / "bench" / "gpu_steps.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_steps"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


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
