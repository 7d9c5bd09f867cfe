from __future__ import annotations

import copy
import math

import pytest
import torch

from liftplace.methods import METHOD_NAMES
from liftplace.training import (
    METRIC_NAMES,
    DistillConfig,
    TeacherConfig,
    TrainingCallback,
    distill,
    load_checkpoint_model,
    lr_at,
    train_teacher,
)


class Recorder(TrainingCallback):
    def __init__(self, stop_at: int | None = None):
        self.metrics: list[dict[str, float]] = []
        self.checkpoints: list[int] = []
        self.stop_at = stop_at
        self.started = None
        self.ended = None

    def on_start(self, start_step, total_steps):
        self.started = (start_step, total_steps)

    def on_step(self, step, total_steps, metrics):
        self.metrics.append(dict(metrics, step=step))

    def on_checkpoint(self, step, path):
        self.checkpoints.append(step)

    def on_end(self, result):
        self.ended = result

    def should_stop(self):
        return self.stop_at is not None and bool(self.metrics) and self.metrics[-1]["step"] >= self.stop_at


def _run(teacher, student, digits, method="lift+place+featkd", seed=0, steps=6, **kw):
    rec = Recorder(kw.pop("stop_at", None))
    result = distill(teacher, None, method, seed, steps, data=digits[:256], student=copy.deepcopy(student),
                     batch_size=16, device="cpu", callbacks=[rec], **kw)
    return result, rec


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_same_seed_same_trajectory(tiny_teacher, narrow_student, digits):
    for method in ("lift+place+featkd", "outkd+featkd"):
        a, ra = _run(tiny_teacher, narrow_student, digits, method, seed=3)
        b, rb = _run(tiny_teacher, narrow_student, digits, method, seed=3)
        c, rc = _run(tiny_teacher, narrow_student, digits, method, seed=4)
        assert [m["loss_total"] for m in ra.metrics] == [m["loss_total"] for m in rb.metrics]
        assert all(torch.equal(p, q) for p, q in zip(_weights(a.model), _weights(b.model), strict=True))
        assert [m["loss_total"] for m in ra.metrics] != [m["loss_total"] for m in rc.metrics]


def test_resume_reproduces_uninterrupted_run(tmp_path, tiny_teacher, narrow_student, digits):
    full, _ = _run(tiny_teacher, narrow_student, digits, steps=8)
    ckpt = tmp_path / "ckpt"
    part, rec = _run(tiny_teacher, narrow_student, digits, steps=8, checkpoint_dir=ckpt, checkpoint_every=2,
                     stop_at=5)
    assert part.outcome == "stopped" and part.steps == 5
    assert rec.checkpoints == [2, 4, 5]
    # A fresh process would rebuild everything: new student object, new optimizer, same checkpoint.
    resumed, rec2 = _run(tiny_teacher, narrow_student, digits, steps=8, checkpoint_dir=ckpt, checkpoint_every=2,
                         resume=True)
    assert rec2.started == (5, 8)
    assert [m["step"] for m in rec2.metrics] == [6, 7, 8]
    assert resumed.outcome == "completed"
    for p, q in zip(_weights(full.model), _weights(resumed.model), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(_weights(full.ema_model), _weights(resumed.ema_model), strict=True):
        assert torch.equal(p, q)
    # The final checkpoint rebuilds the student on its own.
    model, ema, info = load_checkpoint_model(ckpt / "last.pt")
    assert info["step"] == 8
    assert all(torch.equal(p, q) for p, q in zip(_weights(model), _weights(full.model), strict=True))


def test_cosine_schedule_decays_to_zero_and_resumes_on_the_same_curve(tmp_path, tiny_teacher, narrow_student,
                                                                      digits):
    assert [lr_at(s, 4, 1e-2) for s in (1, 4)] == [1e-2, 1e-2]  # constant
    lrs = [lr_at(s, 8, 1e-2, "cosine") for s in range(1, 9)]
    assert lrs[0] == 1e-2 and lrs[3] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 3 / 8)))
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False)) and 0 < lrs[-1] < 1e-3

    full, _ = _run(tiny_teacher, narrow_student, digits, steps=8, lr=1e-2, lr_schedule="cosine")
    constant, _ = _run(tiny_teacher, narrow_student, digits, steps=8, lr=1e-2)
    assert not all(torch.equal(p, q) for p, q in zip(_weights(full.model), _weights(constant.model), strict=True))
    ckpt = tmp_path / "ckpt"
    _run(tiny_teacher, narrow_student, digits, steps=8, lr=1e-2, lr_schedule="cosine", checkpoint_dir=ckpt,
         checkpoint_every=2, stop_at=5)
    with pytest.raises(ValueError, match="^resume:"):  # the schedule is part of the run
        _run(tiny_teacher, narrow_student, digits, steps=8, lr=1e-2, checkpoint_dir=ckpt, resume=True)
    resumed, _ = _run(tiny_teacher, narrow_student, digits, steps=8, lr=1e-2, lr_schedule="cosine",
                      checkpoint_dir=ckpt, resume=True)
    assert all(torch.equal(p, q) for p, q in zip(_weights(full.model), _weights(resumed.model), strict=True))


def test_resume_refuses_a_different_run(tmp_path, tiny_teacher, narrow_student, digits):
    ckpt = tmp_path / "ckpt"
    _run(tiny_teacher, narrow_student, digits, steps=3, checkpoint_dir=ckpt)
    with pytest.raises(ValueError, match="^resume:"):
        _run(tiny_teacher, narrow_student, digits, method="outkd", steps=3, checkpoint_dir=ckpt, resume=True)


def test_metrics_reported(tiny_teacher, narrow_student, digits):
    _, rec = _run(tiny_teacher, narrow_student, digits, steps=3)
    m = rec.metrics[-1]
    assert set(METRIC_NAMES) <= set(m)
    assert 0.0 <= m["w"] <= 1.0
    assert m["loss_total"] > 0 and m["ts_distance"] > 0
    _, rec = _run(tiny_teacher, narrow_student, digits, method="finetune", steps=2)
    assert "loss_kd" not in rec.metrics[-1] and "loss_feat" not in rec.metrics[-1]
    _, rec = _run(tiny_teacher, narrow_student, digits, method="outkd", steps=2)
    assert "loss_kd" in rec.metrics[-1] and "w" not in rec.metrics[-1]


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_trains(method, tiny_teacher, narrow_student, digits):
    result, rec = _run(tiny_teacher, narrow_student, digits, method=method, steps=2)
    assert result.outcome == "completed" and len(rec.metrics) == 2
    assert result.ema_model is not result.model
    # The teacher is frozen and unchanged.
    assert all(not p.requires_grad for p in tiny_teacher.parameters())


def test_divergence_stops_the_run(tiny_teacher, narrow_student, digits):
    class Poison(Recorder):
        def on_step(self, step, total_steps, metrics):
            super().on_step(step, total_steps, metrics)
            if step == 3:
                with torch.no_grad():
                    tiny_teacher.conv_out.bias.fill_(float("nan"))

    rec = Poison()
    result = distill(tiny_teacher, None, "lift+place+featkd", 0, 10, data=digits[:64], student=narrow_student,
                     batch_size=8, device="cpu", callbacks=[rec])
    assert result.outcome == "diverged"
    assert result.diverged_step == 4 and result.steps == 3
    assert result.reason == "diverged at step 4"
    assert len(rec.metrics) == 3
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"method": "kd"}, "method"),
        ({"student_ratio": 1.5, "student": None}, "student_ratio"),
        ({"student_ratio": 0.0, "student": None}, "student_ratio"),
        ({"steps": 0}, "steps"),
        ({"seed": -1}, "seed"),
        ({"group_size": 5}, "group_size"),
        ({"coarse": "l0"}, "coarse"),
        ({"method": "outkd", "ablation": "fine"}, "ablation"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
    ],
)
def test_bad_arguments(kwargs, field, tiny_teacher, narrow_student, digits):
    args = dict(student_ratio=None, method="lift+place+featkd", seed=0, steps=2, data=digits[:16],
                student=narrow_student, device="cpu")
    args.update(kwargs)
    with pytest.raises(ValueError, match=rf"^{field}:"):
        distill(tiny_teacher, **args)


def test_teacher_training_learns(digits, tiny_teacher):
    rec = Recorder()
    result = train_teacher(tiny_teacher, digits, steps=60, batch_size=32, lr=1e-3, seed=0, device="cpu",
                           callbacks=[rec])
    losses = [m["loss_diff"] for m in rec.metrics]
    assert result.outcome == "completed" and len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10


def test_a_config_runs_as_its_keywords(tiny_teacher, narrow_student, digits):
    """distill(config=...) and the keyword form are one run; keywords override the config's fields."""
    by_keywords, rec = _run(tiny_teacher, narrow_student, digits, "outkd+featkd", seed=2, steps=3, lr=1e-3)
    config = DistillConfig(method="outkd+featkd", seed=2, steps=3, lr=5e-2, batch_size=16, student_ratio=None)
    rec2 = Recorder()
    by_config = distill(tiny_teacher, data=digits[:256], student=copy.deepcopy(narrow_student), config=config,
                        lr=1e-3, device="cpu", callbacks=[rec2])
    assert [m["loss_total"] for m in rec.metrics] == [m["loss_total"] for m in rec2.metrics]
    assert all(torch.equal(p, q) for p, q in zip(_weights(by_keywords.model), _weights(by_config.model), strict=True))
    assert by_config.method == "outkd+featkd" and by_config.seed == 2


def test_a_teacher_config_runs_as_its_keywords(digits):
    from liftplace.models import build_unet

    a = train_teacher(build_unet("tiny", seed=0), digits[:64], steps=2, batch_size=8, lr=1e-3, device="cpu")
    b = train_teacher(build_unet("tiny", seed=0), digits[:64], TeacherConfig(steps=2, batch_size=8, lr=1e-3),
                      device="cpu")
    assert all(torch.equal(p, q) for p, q in zip(_weights(a.model), _weights(b.model), strict=True))
    with pytest.raises(TypeError, match="^config: expected a TeacherConfig"):
        train_teacher(b.model, digits[:64], DistillConfig(steps=2), device="cpu")
    with pytest.raises(ValueError, match="^data: "):
        train_teacher(b.model, digits[0], steps=2, device="cpu")
