from __future__ import annotations

import argparse
import re

import pytest

from liftplace.cli import build_parser, main
from liftplace.methods import METHOD_NAMES


def _help(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["train-teacher", "prune", "distill", "sample"])
def test_help_explains_every_flag(command, capsys):
    text = _help(capsys, command)
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[0]
        assert flag in text
        assert action.help and len(action.help) > 5, f"{flag} has no explanation"
        if action.default not in (None, False) and not action.required:
            assert "default" in action.help or "(default:" in text


def _all_parsers(parser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, (*path, name))


def test_help_states_each_default_once_and_only_real_ones(capsys):
    """No "(default: None)" or "(default: False)" noise, and no default said twice (a help text that names
    its own default, such as serve's environment variables, is not followed by argparse's)."""
    seen = set()
    for path, _ in _all_parsers(build_parser()):
        text = re.sub(r"\s+", " ", _help(capsys, *path))
        seen.add(path)
        assert "(default: None)" not in text, path
        assert "(default: False)" not in text, path
        assert not re.search(r"\(default:[^()]*\) \(default:", text), path
    assert ("serve",) in seen and ("study", "run") in seen  # the plugged-in and nested commands are covered


def test_distill_help_lists_methods_and_defaults(capsys):
    text = _help(capsys, "distill")
    for name in METHOD_NAMES:
        assert name in text
    assert re.search(r"--group-size.*\n?.*default: 16\)", text, re.S)
    assert "default: lift+place+featkd" in text


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["distill", "--teacher", ".", "--steps", "1", "--output", "x", "--method", "kd"], "--method"),
        (["distill", "--teacher", ".", "--steps", "1", "--output", "x", "--student-ratio", "1.5"], "--student-ratio"),
        (["distill", "--teacher", ".", "--steps", "0", "--output", "x"], "--steps"),
        (["distill", "--teacher", "/no/such/dir", "--steps", "1", "--output", "x"], "--teacher"),
        (["prune", "--teacher", ".", "--ratio", "0", "--output", "x"], "--ratio"),
        (["sample", "--model", ".", "--num-samples", "-3", "--output", "x.png"], "--num-samples"),
        # refused by the training config (liftplace.config), reported against the flag
        (["train-teacher", "--steps", "1", "--output", "x", "--ema-decay", "1.5"], "--ema-decay"),
        (["distill", "--teacher", ".", "--steps", "1", "--output", "x", "--ema-decay", "1"], "--ema-decay"),
        (["distill", "--teacher", ".", "--steps", "1", "--output", "x", "--method", "outkd", "--ablation", "fine"],
         "--ablation"),
    ],
)
def test_bad_values_exit_2_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
