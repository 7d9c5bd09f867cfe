"""One definition per default: the job spec, the training configs and the CLI read liftplace.defaults / methods.

Each test fails when a default is restated with another value; the job spec's test also fails when one
is restated at all (a literal where liftplace.defaults has the value).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect

import pytest

from liftplace import defaults
from liftplace.cli import build_parser
from liftplace.config import DistillConfig, TeacherConfig, TrainConfig
from liftplace.methods import PAPER_METHOD
from worker.spec import JobSpec

# Every JobSpec field that has a library default, and that default.
JOB_SPEC_DEFAULTS = {
    "seed": defaults.SEED,
    "steps": defaults.STEPS,
    "dataset": defaults.DATASET,
    "dataset_name": defaults.DATASET,
    "batch_size": defaults.BATCH_SIZE,
    "lr": defaults.LEARNING_RATE,
    "lr_schedule": defaults.LR_SCHEDULE,
    "checkpoint_every": defaults.CHECKPOINT_EVERY,
    "student_ratio": defaults.STUDENT_RATIO,
    "method": PAPER_METHOD,
    "importance": defaults.PRUNING_IMPORTANCE,
    "group_size": defaults.GROUP_SIZE,
    "coarse": defaults.COARSE_DISTANCE,
    "curriculum": defaults.CURRICULUM,
    "reduction": defaults.REDUCTION,
    "fid_samples": defaults.FID_SAMPLES,
    "fid_features": defaults.FID_FEATURES,
    "sample_steps": defaults.DDIM_STEPS,
}

TRAIN_CONFIG_DEFAULTS = {
    "steps": defaults.STEPS,
    "seed": defaults.SEED,
    "batch_size": defaults.BATCH_SIZE,
    "lr": defaults.LEARNING_RATE,
    "lr_schedule": defaults.LR_SCHEDULE,
    "ema_decay": defaults.EMA_DECAY,
    "grad_clip": defaults.GRAD_CLIP,
    "reduction": defaults.REDUCTION,
    "checkpoint_every": defaults.CHECKPOINT_EVERY,
}
DISTILL_CONFIG_DEFAULTS = {
    **TRAIN_CONFIG_DEFAULTS,
    "method": PAPER_METHOD,
    "student_ratio": defaults.STUDENT_RATIO,
    "importance": defaults.PRUNING_IMPORTANCE,
    "group_size": defaults.GROUP_SIZE,
    "coarse": defaults.COARSE_DISTANCE,
    "curriculum": defaults.CURRICULUM,
}


def _field_defaults(cls: type) -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def _subparser(command: str) -> argparse.ArgumentParser:
    return build_parser()._subparsers._group_actions[0].choices[command]


def _flag_defaults(command: str) -> dict[str, object]:
    """{dest: default} of a subcommand's optional flags."""
    return {a.dest: a.default for a in _subparser(command)._actions if a.option_strings and a.dest != "help"}


def test_the_job_spec_defaults_are_the_library_defaults() -> None:
    assert {k: v for k, v in _field_defaults(JobSpec).items() if k in JOB_SPEC_DEFAULTS} == JOB_SPEC_DEFAULTS


def test_the_job_spec_restates_no_library_default() -> None:
    """A literal default in JobSpec for one of those fields would be a second definition, even an equal one."""
    tree = ast.parse(inspect.getsource(JobSpec))
    literal = [node.target.id for node in ast.walk(tree)
               if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
               and node.target.id in JOB_SPEC_DEFAULTS and isinstance(node.value, ast.Constant)]
    assert literal == []


@pytest.mark.parametrize("cls,expected", [(TrainConfig, TRAIN_CONFIG_DEFAULTS), (TeacherConfig, TRAIN_CONFIG_DEFAULTS),
                                          (DistillConfig, DISTILL_CONFIG_DEFAULTS)])
def test_the_config_defaults_are_the_library_defaults(cls: type, expected: dict[str, object]) -> None:
    assert {k: v for k, v in _field_defaults(cls).items() if k in expected} == expected


def test_job_spec_and_configs_agree_on_every_shared_field() -> None:
    """A job that leaves an option out trains as the library would."""
    spec = _field_defaults(JobSpec)
    for cls in (TeacherConfig, DistillConfig):
        config = _field_defaults(cls)
        shared = set(spec) & set(config)
        assert shared, cls
        assert {k: spec[k] for k in shared} == {k: config[k] for k in shared}, cls


@pytest.mark.parametrize("command,cls", [("train-teacher", TeacherConfig), ("distill", DistillConfig)])
def test_the_training_flags_default_to_the_config_defaults(command: str, cls: type) -> None:
    flags = _flag_defaults(command)
    config = _field_defaults(cls)
    required = {a.dest for a in _subparser(command)._actions if a.required}
    shared = (set(flags) & set(config)) - required
    assert {"seed", "batch_size", "lr", "lr_schedule", "ema_decay", "checkpoint_every"} <= shared
    assert {k: flags[k] for k in shared} == {k: config[k] for k in shared}
    if cls is DistillConfig:  # --no-curriculum switches the default off
        assert flags["no_curriculum"] is (not defaults.CURRICULUM)


def test_the_other_cli_defaults_are_the_library_defaults() -> None:
    assert _flag_defaults("train-teacher")["dataset"] == defaults.DATASET
    prune = _flag_defaults("prune")
    assert (prune["ratio"], prune["importance"], prune["seed"]) == (
        defaults.STUDENT_RATIO, defaults.PRUNING_IMPORTANCE, defaults.SEED)
    distill = _flag_defaults("distill")
    assert (distill["samples"], distill["sample_steps"], distill["dataset"]) == (
        defaults.GRID_SAMPLES, defaults.DDIM_STEPS, defaults.DATASET)
    sample = _flag_defaults("sample")
    assert (sample["num_samples"], sample["steps"], sample["eta"], sample["seed"], sample["batch_size"]) == (
        defaults.GRID_SAMPLES, defaults.DDIM_STEPS, defaults.DDIM_ETA, defaults.SEED, defaults.SAMPLE_BATCH_SIZE)
    fid = _flag_defaults("fid")
    assert (fid["dataset"], fid["features"], fid["steps"], fid["seed"], fid["batch_size"]) == (
        defaults.DATASET, defaults.FID_FEATURES, defaults.DDIM_STEPS, defaults.SEED, defaults.SAMPLE_BATCH_SIZE)


def test_checkpoint_every_has_one_value_everywhere() -> None:
    values = {
        "JobSpec": _field_defaults(JobSpec)["checkpoint_every"],
        "TeacherConfig": _field_defaults(TeacherConfig)["checkpoint_every"],
        "DistillConfig": _field_defaults(DistillConfig)["checkpoint_every"],
        "train-teacher": _flag_defaults("train-teacher")["checkpoint_every"],
        "distill": _flag_defaults("distill")["checkpoint_every"],
    }
    assert set(values.values()) == {defaults.CHECKPOINT_EVERY}, values
    assert defaults.CHECKPOINT_EVERY > 0  # jobs and the CLI resume from periodic checkpoints
