"""Teachers shipped with liftplace: digests that match, a tampered copy refused by file name, a teacher that
loads and samples, provenance that names its command, commit and the preset's current recipe."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from liftplace import shipped
from liftplace.models import count_parameters, load_unet
from liftplace.shipped import (
    SHIPPED_DIR,
    SHIPPED_PREFIX,
    ShippedTeacherError,
    manifest,
    provenance,
    sha256_file,
    shipped_names,
    shipped_teacher,
    teacher_meta,
    verify_teacher,
)
from liftplace.studies import STUDY_PRESETS, get_study_preset

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = "diffusion_pytorch_model.safetensors"
SMALLEST = "stability-digits-s-p70"  # the quickest to load and sample
MAX_BYTES = 10_000_000  # "a few MB in all": the artifacts live in git


def _copy(tmp_path: Path, name: str = SMALLEST) -> Path:
    """A copy of the manifest and one teacher under `tmp_path` (a root of its own)."""
    shutil.copyfile(SHIPPED_DIR / shipped.MANIFEST_FILE, tmp_path / shipped.MANIFEST_FILE)
    shutil.copytree(SHIPPED_DIR / name, tmp_path / name)
    return tmp_path / name


def test_every_shipped_file_matches_its_digest_and_the_stability_presets_use_them() -> None:
    names = shipped_names()
    wanted = {t.shipped for p in STUDY_PRESETS.values() for t in p.teachers if t.shipped}
    assert set(names) == wanted == {"stability-digits-s", "stability-digits-s-p50", "stability-digits-s-p70"}
    total = 0
    for name in names:
        files = manifest()["teachers"][name]["files"]
        assert {"config.json", WEIGHTS, "liftplace.json"} <= set(files)
        for file, digest in files.items():
            assert sha256_file(SHIPPED_DIR / name / file) == digest, (name, file)
            total += (SHIPPED_DIR / name / file).stat().st_size
        assert shipped_teacher(name) == SHIPPED_DIR / name
    assert total < MAX_BYTES, total


def test_no_shipped_file_names_a_location_of_the_machine_that_made_it() -> None:
    import json

    def strings(value: object) -> list[str]:
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    for name in shipped_names():
        for file in ("config.json", "liftplace.json"):
            data = json.loads((SHIPPED_DIR / name / file).read_text())
            assert "_name_or_path" not in data, (name, file)
            assert not [s for s in strings(data) if s.startswith(("/", "~")) or ":\\" in s], (name, file)


def test_the_package_data_includes_every_shipped_file() -> None:
    """pyproject's package-data globs cover the manifest and every teacher's files (an install ships them)."""
    import tomllib
    from fnmatch import fnmatch

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = globs["liftplace.shipped"]
    files = [shipped.MANIFEST_FILE] + [f"{n}/{f}" for n in shipped_names() for f in manifest()["teachers"][n]["files"]]
    assert all(any(fnmatch(f, p) for p in patterns) for f in files), (patterns, files)


def test_a_tampered_copy_is_refused_naming_the_file(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    assert shipped_teacher(SMALLEST, root=tmp_path) == folder  # the untouched copy passes
    data = bytearray((folder / WEIGHTS).read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    (folder / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ShippedTeacherError, match=f"{SMALLEST}.*file {WEIGHTS} has sha256 .*manifest expects"):
        shipped_teacher(SMALLEST, root=tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(ShippedTeacherError, match="file config.json is missing"):
        verify_teacher(folder, SMALLEST, root=tmp_path)
    with pytest.raises(ShippedTeacherError, match="no shipped teacher 'nope'; shipped: stability-digits-s"):
        shipped_teacher("nope")


def test_load_unet_checks_a_shipped_folder_before_loading_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    folder = _copy(tmp_path)
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path)  # the copy stands for the package's folder
    load_unet(folder)
    (folder / "liftplace.json").write_text((folder / "liftplace.json").read_text().replace('"steps"', '"steps" '))
    with pytest.raises(ShippedTeacherError, match="file liftplace.json has sha256"):
        load_unet(folder)
    with pytest.raises(ShippedTeacherError, match="file liftplace.json has sha256"):
        load_unet(SHIPPED_PREFIX + SMALLEST)


@pytest.mark.parametrize("name", [SMALLEST, "stability-digits-s"])
def test_a_shipped_teacher_loads_and_samples(name: str) -> None:
    from liftplace.sampling import sample

    model = load_unet(SHIPPED_PREFIX + name)
    assert count_parameters(model) == teacher_meta(name)["parameters"]
    images = sample(model, 4, seed=0, num_inference_steps=3)
    assert images.shape == (4, 1, 8, 8) and torch.isfinite(images).all()
    assert images.abs().max() <= 1.0 and images.std() > 0.05  # images, not a constant


def test_the_provenance_names_the_command_the_commit_and_the_presets_current_recipe() -> None:
    plans = {t.name: t for t in get_study_preset("stability").teachers}
    for name in shipped_names():
        made = provenance(name)
        assert made["command"].startswith("python scripts/ship_teachers.py") and made["tree_clean"] is True
        assert len(made["commit"]) == 40
        # the commit is in this repository's history, and it holds the script that made the teacher
        subprocess.run(["git", "cat-file", "-e", f"{made['commit']}:scripts/ship_teachers.py"], cwd=ROOT, check=True)
        # the recipe the preset trains with --retrain is the one that made the shipped teacher: a changed
        # recipe needs the teachers shipped again (python scripts/ship_teachers.py)
        assert made["plan"] == plans[name].request("digits", retrain=True), name
        fid = made["fid"]
        assert fid["metric"] == "fid_digits" and 0 < fid["value"] < 100 and fid["samples"] >= 1000
        assert made["steps"] == plans[name].train["steps"]
        assert made["environment"]["threads"] == 1 and made["environment"]["device"] == "cpu"


def test_the_cli_takes_a_shipped_teacher(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from liftplace.cli import main

    assert main(["sample", "--model", SHIPPED_PREFIX + SMALLEST, "--num-samples", "4", "--steps", "2",
                 "--output", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").is_file()
    with pytest.raises(SystemExit):
        main(["sample", "--model", SHIPPED_PREFIX + "nope", "--output", str(tmp_path / "x.png")])
    assert "no shipped teacher 'nope'" in capsys.readouterr().err
    assert main(["shipped"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in listed] == list(shipped_names())
    assert f"{provenance(SMALLEST)['fid']['value']:.2f}" in listed[-1] and "scripts/ship_teachers.py" in listed[-1]


def test_the_report_takes_a_shipped_teachers_fid_from_its_provenance() -> None:
    from liftplace.report.compute import teacher_row

    record = {"source": "shipped", "folder": SMALLEST, "parameters": 1, "prune_ratio": 0.7}
    row = teacher_row(SMALLEST, record, {}, None, {"fid_samples": 1, "sample_steps": 1})
    fid = provenance(SMALLEST)["fid"]
    assert (row.fid, row.fid_samples, row.sample_steps) == (fid["value"], fid["samples"], fid["sample_steps"])
    assert row.steps == provenance(SMALLEST)["steps"]
