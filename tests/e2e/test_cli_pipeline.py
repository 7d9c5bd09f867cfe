"""The whole library path through the CLI: teacher -> prune 0.9 -> distill -> sample."""

from __future__ import annotations

import json

import pytest
import torch

from liftplace.cli import main
from liftplace.models import count_parameters, load_unet


@pytest.mark.slow
def test_teacher_prune_distill_sample(tmp_path, capsys):
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    assert main(["train-teacher", "--preset", "tiny", "--steps", "40", "--batch-size", "32", "--lr", "1e-3",
                 "--output", str(teacher_dir)]) == 0
    teacher = load_unet(teacher_dir)
    summary = json.loads((teacher_dir / "summary.json").read_text())
    assert summary["outcome"] == "completed" and summary["parameters"] == count_parameters(teacher)

    assert main(["prune", "--teacher", str(teacher_dir), "--ratio", "0.9", "--output", str(student_dir)]) == 0
    pruned = load_unet(student_dir)
    assert count_parameters(pruned) < 0.1 * count_parameters(teacher)

    # One method prunes the teacher itself, the other starts from the pruned student folder.
    for method, student_args in (("lift+place+featkd", []), ("outkd", ["--student", str(student_dir)])):
        out = tmp_path / method
        assert main(["distill", "--teacher", str(teacher_dir), "--method", method, "--steps", "12",
                     "--batch-size", "16", "--samples", "16", "--sample-steps", "5", "--checkpoint-every", "5",
                     "--output", str(out), *student_args]) == 0
        s = json.loads((out / "summary.json").read_text())
        assert s["outcome"] == "completed" and s["method"] == method
        assert s["student_parameters"] < 0.1 * s["teacher_parameters"]
        assert (out / "samples.png").is_file() and (out / "checkpoint" / "last.pt").is_file()
        student = load_unet(out)
        assert count_parameters(student) == s["student_parameters"]

    assert main(["sample", "--model", str(tmp_path / "outkd"), "--num-samples", "9", "--steps", "5",
                 "--output", str(tmp_path / "grid.png")]) == 0
    images = torch.load(tmp_path / "grid.pt")
    assert images.shape == (9, 1, 8, 8) and torch.isfinite(images).all()

    # A group size that does not divide H*W is refused, naming the flag, before any training.
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["distill", "--teacher", str(teacher_dir), "--group-size", "5", "--steps", "3",
              "--output", str(tmp_path / "bad")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--group-size" in err and "K=5" in err
