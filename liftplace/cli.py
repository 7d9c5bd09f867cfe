"""The `liftplace` command line: train-teacher, prune, distill, sample (and fid, table).

Every flag's help states its default (read from liftplace.defaults / liftplace.methods);
a bad value ends with a message naming the flag and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from liftplace import defaults
from liftplace.methods import FEATKD_LAYER_SETS, FEATKD_LAYERS, METHOD_NAMES, METHODS, PAPER_METHOD

__all__ = ["HelpFormatter", "main", "build_parser", "run_commands"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" except where there is none to show: no default, a required argument, a
    switch (its default is just "off"), or a help text that already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default is None or action.required or action.default is argparse.SUPPRESS
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
                or "(default:" in text):
            return text
        return super()._get_help_string(action)


# --- argument types: each names the problem so argparse can report it against the flag ----


def number_type(cast: type, description: str, ok) -> object:
    """An argparse `type` that casts with `cast` and accepts values for which `ok(value)` holds."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {description}, got {value}")
        return value

    parse.__name__ = description
    return parse


_positive_int = number_type(int, "a positive integer", lambda v: v >= 1)
_non_negative_int = number_type(int, "a non-negative integer", lambda v: v >= 0)
_ratio = number_type(float, "a number strictly between 0 and 1", lambda v: 0.0 < v < 1.0)
_positive_float = number_type(float, "a positive number", lambda v: v > 0)
_non_negative_float = number_type(float, "a non-negative number", lambda v: v >= 0)


def _group_size(text: str) -> int | None:
    if text.lower() in ("none", "lift"):
        return None
    return _positive_int(text)


def _existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    return path


def _model_dir(text: str) -> Path | str:
    """A model folder, ``shipped:NAME`` (a teacher shipped with liftplace, its digests checked), or an MLflow
    URI (``runs:/<run id>/model``, ``models:/<name>/<version>``: load_unet downloads it once)."""
    from liftplace.model_cache import is_mlflow_uri
    from liftplace.shipped import SHIPPED_PREFIX, ShippedTeacherError, shipped_teacher

    if is_mlflow_uri(text):
        return text
    if text.startswith(SHIPPED_PREFIX):
        try:
            return shipped_teacher(text[len(SHIPPED_PREFIX):])
        except ShippedTeacherError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return _existing_dir(text)


_MLFLOW_HELP = "runs:/RUN_ID/model (a model a job logged to its MLflow run) or models:/NAME/VERSION"
_TEACHER_HELP = (f"diffusers model folder of the teacher, shipped:NAME (a teacher shipped with liftplace), "
                 f"{_MLFLOW_HELP}")


# --- shared flag groups ----------------------------------------------------------------------


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default=defaults.DATASET,
                   help="'digits' (embedded sklearn digits) or a local folder of png/jpg images")
    p.add_argument("--resolution", type=_positive_int, default=None,
                   help=f"image size; default {defaults.DIGITS_RESOLUTION} for digits, "
                        f"{defaults.IMAGE_FOLDER_RESOLUTION} for image folders")


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=_positive_int, required=True, help="optimisation steps")
    p.add_argument("--seed", type=_non_negative_int, default=defaults.SEED, help="seed of data order, noise and init")
    p.add_argument("--batch-size", type=_positive_int, default=defaults.BATCH_SIZE, help="images per step")
    p.add_argument("--lr", type=_positive_float, default=defaults.LEARNING_RATE, help="Adam learning rate")
    p.add_argument("--lr-schedule", choices=defaults.LR_SCHEDULES, default=defaults.LR_SCHEDULE,
                   help="constant, or cosine decay from --lr to 0 over the steps")
    p.add_argument("--ema-decay", type=float, default=defaults.EMA_DECAY, help="EMA decay (warmed up)")
    p.add_argument("--flip", action="store_true", help="random horizontal flips (not for digits)")
    p.add_argument("--checkpoint-every", type=_non_negative_int, default=defaults.CHECKPOINT_EVERY,
                   help="write OUTPUT/checkpoint/last.pt every N steps (0: only at the end)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint/last.pt if it exists")
    p.add_argument("--device", default=None, help="torch device; default cuda if available, else cpu")
    p.add_argument("--output", type=Path, required=True, help="folder for the model, checkpoint and summary")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liftplace",
        description="Distill tiny diffusion students with LIFT and PLACE (CVPR 2026), and the baselines.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (_register_train_teacher, _register_prune, _register_distill, _register_sample,
                     _register_shipped, _register_others):
        register(sub)
    return parser


def _register_train_teacher(sub: argparse._SubParsersAction) -> None:
    from liftplace.presets import PRESET_NAMES

    p = sub.add_parser("train-teacher", help="train a DDPM teacher (UNet2DModel preset) on a dataset",
                       formatter_class=HelpFormatter, description="Train a DDPM epsilon-prediction teacher.")
    p.add_argument("--preset", choices=PRESET_NAMES, default="digits-s", help="teacher architecture")
    _add_data_flags(p)
    _add_training_flags(p)
    p.set_defaults(func=_cmd_train_teacher)


def _register_prune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="make a student by Diff-Pruning a teacher", formatter_class=HelpFormatter,
                       description="Structurally prune a teacher UNet with torch-pruning (Diff-Pruning).")
    p.add_argument("--teacher", type=_model_dir, required=True, help=_TEACHER_HELP)
    p.add_argument("--ratio", type=_ratio, default=defaults.STUDENT_RATIO,
                   help="fraction of each layer's channels removed, in (0, 1)")
    p.add_argument("--importance", choices=defaults.PRUNING_IMPORTANCES, default=defaults.PRUNING_IMPORTANCE,
                   help="channel importance: Taylor (diffusion loss, early timesteps) or weight magnitude")
    p.add_argument("--seed", type=_non_negative_int, default=defaults.SEED, help="seed of the Taylor batches")
    _add_data_flags(p)
    p.add_argument("--output", type=Path, required=True, help="folder for the pruned student (diffusers format)")
    p.set_defaults(func=_cmd_prune)


def _register_distill(sub: argparse._SubParsersAction) -> None:
    methods_help = " ".join(f"{m.name}: {m.description}" for m in METHODS.values())
    p = sub.add_parser("distill", help="distill a teacher into a pruned student", formatter_class=HelpFormatter,
                       description="Distill a frozen teacher into a student. Methods. " + methods_help)
    p.add_argument("--teacher", type=_model_dir, required=True, help=_TEACHER_HELP)
    p.add_argument("--method", choices=METHOD_NAMES, default=PAPER_METHOD, help="distillation method")
    p.add_argument("--student-ratio", type=_ratio, default=defaults.STUDENT_RATIO,
                   help="Diff-Pruning ratio that makes the student from the teacher, in (0, 1)")
    p.add_argument("--student", type=_existing_dir, default=None,
                   help="start from this student folder instead of pruning the teacher")
    p.add_argument("--importance", choices=defaults.PRUNING_IMPORTANCES, default=defaults.PRUNING_IMPORTANCE,
                   help="pruning importance")
    p.add_argument("--group-size", type=_group_size, default=defaults.GROUP_SIZE,
                   help="PLACE group size K (must divide H*W); 'none' = one group (LIFT)")
    p.add_argument("--coarse", choices=defaults.COARSE_DISTANCES, default=defaults.COARSE_DISTANCE,
                   help="distance of the coarse LIFT term")
    p.add_argument("--no-curriculum", action="store_true", help="fix the adaptive weight w to 1")
    p.add_argument("--ablation", choices=[a for a in defaults.ABLATIONS if a is not None], default=None,
                   help="LIFT ablation: coarse term only or fine term only")
    p.add_argument("--reduction", choices=defaults.REDUCTIONS, default=defaults.REDUCTION,
                   help="'sum' over C*H*W per sample (pixel DDPM) or 'mean' over all elements")
    p.add_argument("--lambda-diff", type=_non_negative_float, default=None,
                   help=f"weight of the diffusion loss (default: the method's, {defaults.LAMBDA_DIFF})")
    p.add_argument("--lambda-kd", type=_non_negative_float, default=None,
                   help=f"weight of the output KD loss (default: the method's, {defaults.LAMBDA_KD}; 0 for finetune)")
    p.add_argument("--lambda-feat", type=_non_negative_float, default=None,
                   help=f"weight of FeatKD (default: the method's, {defaults.LAMBDA_FEAT} with featkd, else 0)")
    p.add_argument("--featkd-layers", choices=FEATKD_LAYER_SETS, default=FEATKD_LAYERS,
                   help="FeatKD hooks: every ResNet/attention/resampling conv with small bias-free adapters "
                        "(sublayers, the LIFT and PLACE code's) or whole UNet blocks (blocks)")
    _add_data_flags(p)
    _add_training_flags(p)
    p.add_argument("--samples", type=_non_negative_int, default=defaults.GRID_SAMPLES,
                   help="images in the sample grid written at the end (0: none)")
    p.add_argument("--sample-steps", type=_positive_int, default=defaults.DDIM_STEPS, help="DDIM steps for the grid")
    p.set_defaults(func=_cmd_distill)


def _register_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample a grid of images with DDIM", formatter_class=HelpFormatter,
                       description="Generate images from a teacher or student folder with DDIM (eta = 0).")
    p.add_argument("--model", type=_model_dir, required=True,
                   help=f"diffusers model folder, shipped:NAME (a teacher shipped with liftplace), {_MLFLOW_HELP}")
    p.add_argument("--num-samples", type=_positive_int, default=defaults.GRID_SAMPLES, help="number of images")
    p.add_argument("--steps", type=_positive_int, default=defaults.DDIM_STEPS, help="DDIM steps")
    p.add_argument("--eta", type=_non_negative_float, default=defaults.DDIM_ETA, help="DDIM eta")
    p.add_argument("--seed", type=_non_negative_int, default=defaults.SEED, help="seed of the initial noise")
    p.add_argument("--batch-size", type=_positive_int, default=defaults.SAMPLE_BATCH_SIZE, help="images per batch")
    p.add_argument("--scale", type=_positive_int, default=4, help="pixel enlargement of the saved grid")
    p.add_argument("--output", type=Path, required=True, help="PNG file for the grid (a .pt tensor is saved beside)")
    p.add_argument("--device", default=None, help="torch device; default cuda if available, else cpu")
    p.set_defaults(func=_cmd_sample)


def _register_shipped(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shipped", help="the teachers shipped with liftplace: digests checked, FID, provenance",
                       formatter_class=HelpFormatter,
                       description="Check every shipped teacher's files against their sha256 digests and print "
                                   "each with its size, FID and the command and commit that made it. Use one as "
                                   "--teacher shipped:NAME; the stability presets register them.")
    p.add_argument("--json", action="store_true", help="print every teacher's full provenance as JSON")
    p.set_defaults(func=_cmd_shipped)


def _cmd_shipped(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import json

    from liftplace.shipped import shipped_names, teacher_meta

    metas = {name: teacher_meta(name) for name in shipped_names()}  # ShippedTeacherError names a bad file
    if args.json:
        print(json.dumps(metas, indent=2, sort_keys=True))
        return 0
    for name, meta in metas.items():
        made, fid = meta["extra"], meta["extra"]["fid"]
        print(f"{name}: {meta['parameters']:,} parameters, {made['steps']} steps, {fid['metric']} {fid['value']:.2f} "
              f"({fid['samples']} samples, {fid['sample_steps']} DDIM steps); made by `{made['command']}` at "
              f"commit {made['commit'][:12]}")
    return 0


def _register_others(sub: argparse._SubParsersAction) -> None:
    """The evaluation and study commands, and those of installed plugins."""
    try:
        from liftplace import cli_eval
    except ImportError:  # the evaluation commands ship with liftplace.fid / liftplace.stats
        cli_eval = None
    if cli_eval is not None:
        cli_eval.register(sub)
    from liftplace import cli_study

    cli_study.register(sub)
    # Commands of the platform (e.g. `serve`) plug in through an entry point, so that this
    # library never imports the server: each entry point is a register(subparsers) function.
    from importlib.metadata import entry_points

    for ep in entry_points(group="liftplace.commands"):
        try:
            register = ep.load()
        except ImportError as exc:  # the platform's extra dependencies are not installed
            _register_unavailable(sub, ep.name, exc)
            continue
        register(sub)


# --- platform commands without the platform extra ------------------------------------------------

PLATFORM_EXTRA = "pip install 'liftplace[platform]'"
OWN_PACKAGES = ("liftplace", "server", "worker", "web")


def _platform_missing(command: str, exc: ImportError) -> int:
    """One line instead of a traceback when a platform command lacks its dependencies; exit code 2."""
    print(f"liftplace {command}: needs the platform extra ({exc}); install it with {PLATFORM_EXTRA}",
          file=sys.stderr)
    return 2


def _register_unavailable(sub: argparse._SubParsersAction, name: str, exc: ImportError) -> None:
    # Any arguments are accepted (no option prefix): the command cannot run, whatever is asked of it.
    p = sub.add_parser(name, help=f"(unavailable: {PLATFORM_EXTRA})", add_help=False, prefix_chars="\0")
    p.add_argument("args", nargs="*")
    p.set_defaults(func=lambda _args, _parser: _platform_missing(name, exc))


# --- commands ------------------------------------------------------------------------------------


def _load_data(args: argparse.Namespace, parser: argparse.ArgumentParser):
    from liftplace.data import load_dataset

    try:
        return load_dataset(args.dataset, args.resolution)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(f"--dataset/--resolution: {exc}")


def _load_model(path, parser: argparse.ArgumentParser, flag: str, **kwargs):
    """load_unet, with a problem an MLflow URI can only show when loaded (nothing there, no MLflow) as the
    parser's error naming the flag."""
    from liftplace.models import load_unet

    try:
        return load_unet(path, **kwargs)
    except (FileNotFoundError, ImportError) as exc:
        parser.error(f"{flag}: {exc}")


def _device(args: argparse.Namespace):
    from liftplace.device import pick_device

    return pick_device(args.device)


_Config = TypeVar("_Config")


def _config(cls: type[_Config], args: argparse.Namespace, parser: argparse.ArgumentParser, **fields: Any) -> _Config:
    """A TeacherConfig / DistillConfig from the flags of the same names (and `fields`); a bad value
    exits 2 naming its flag."""
    import dataclasses

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    try:
        return cls(**{**flags, **fields})
    except ValueError as exc:
        _exit_on(exc, parser)


def _exit_on(exc: ValueError, parser: argparse.ArgumentParser) -> NoReturn:
    """parser.error for a library error "FIELD: ...", naming the flag --FIELD."""
    field = str(exc).split(":", 1)[0]
    parser.error(f"--{field.replace('_', '-')}: {exc}")


def _write_summary(output: Path, summary: dict) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))


def _cmd_train_teacher(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from liftplace.models import build_unet, save_unet
    from liftplace.training import ProgressCallback, TeacherConfig, train_teacher

    config = _config(TeacherConfig, args, parser)
    data = _load_data(args, parser)
    try:
        model = build_unet(args.preset, sample_size=data.shape[-1], in_channels=data.shape[1], seed=args.seed)
    except ValueError as exc:
        parser.error(f"--preset/--resolution: {exc}")
    result = train_teacher(model, data, config, device=_device(args), checkpoint_dir=args.output / "checkpoint",
                           resume=args.resume, callbacks=[ProgressCallback("teacher")])
    summary = {"command": "train-teacher", "preset": args.preset, "dataset": args.dataset, "steps": args.steps,
               "seed": args.seed, "outcome": result.outcome, "reason": result.reason,
               "parameters": result.parameters, "last_metrics": result.last_metrics}
    save_unet(result.ema_model, args.output, extra=summary)
    _write_summary(args.output, summary)
    print(f"teacher: {result.reason}; {result.parameters:,} parameters; saved to {args.output}")
    return 0 if result.outcome == "completed" else 1


def _cmd_prune(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from liftplace.models import save_unet
    from liftplace.pruning import prune

    teacher = _load_model(args.teacher, parser, "--teacher")
    data = _load_data(args, parser) if args.importance == "taylor" else None
    result = prune(teacher, args.ratio, args.importance, data=data, seed=args.seed, progress=True)
    summary = {"command": "prune", "teacher": str(args.teacher), "ratio": args.ratio, "importance": args.importance,
               "params_before": result.params_before, "params_after": result.params_after,
               "remaining_fraction": result.remaining_fraction}
    save_unet(result.model, args.output, extra=summary)
    _write_summary(args.output, summary)
    print(f"pruned {result.params_before:,} -> {result.params_after:,} parameters "
          f"({100 * result.remaining_fraction:.2f}% remain); saved to {args.output}")
    return 0


def _cmd_distill(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from liftplace.models import save_unet
    from liftplace.sampling import sample, save_grid
    from liftplace.training import DistillConfig, ProgressCallback, distill

    config = _config(DistillConfig, args, parser, curriculum=not args.no_curriculum)
    teacher = _load_model(args.teacher, parser, "--teacher")
    data = _load_data(args, parser)
    student = _load_model(args.student, parser, "--student") if args.student is not None else None
    try:
        result = distill(teacher, data=data, student=student, config=config, device=_device(args),
                         checkpoint_dir=args.output / "checkpoint", resume=args.resume,
                         callbacks=[ProgressCallback(f"distill {args.method} seed {args.seed}")])
    except ValueError as exc:  # what only the data can tell (K must divide H*W, images that fit the teacher)
        _exit_on(exc, parser)
    summary = {"command": "distill", "teacher": str(args.teacher), "method": args.method, "seed": args.seed,
               "steps": args.steps, "student_ratio": args.student_ratio, "outcome": result.outcome,
               "reason": result.reason, "diverged_step": result.diverged_step,
               "student_parameters": result.parameters, "teacher_parameters": result.teacher_parameters,
               "last_metrics": result.last_metrics}
    save_unet(result.ema_model, args.output, extra=summary)
    _write_summary(args.output, summary)
    if args.samples and result.outcome != "diverged":
        images = sample(result.ema_model, args.samples, seed=args.seed, num_inference_steps=args.sample_steps,
                        progress=True)
        save_grid(images, args.output / "samples.png", scale=4)
    print(f"distill {args.method} seed {args.seed}: {result.reason}; student {result.parameters:,} of "
          f"{result.teacher_parameters:,} teacher parameters; saved to {args.output}")
    return 0 if result.outcome == "completed" else 1


def _cmd_sample(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from liftplace.sampling import sample, save_grid

    model = _load_model(args.model, parser, "--model", device=_device(args))
    images = sample(model, args.num_samples, seed=args.seed, num_inference_steps=args.steps, eta=args.eta,
                    batch_size=args.batch_size, progress=True)
    save_grid(images, args.output, scale=args.scale)
    torch.save(images, args.output.with_suffix(".pt"))
    print(f"{args.num_samples} samples -> {args.output}")
    return 0


def run_commands(register: Callable[[argparse._SubParsersAction], None], argv: Sequence[str] | None,
                 prog: str) -> int:
    """Parse `argv` for the subcommands `register` adds (a module's own entry point, e.g. ``python -m
    server.cli serve``: the same commands without the rest of the CLI) and run the chosen one."""
    parser = argparse.ArgumentParser(prog=prog, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args, sub.choices[args.command]) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sub_parser = parser._subparsers._group_actions[0].choices[args.command]  # the subcommand's own parser
    try:
        return int(args.func(args, sub_parser) or 0)
    except ModuleNotFoundError as exc:
        # A command plugged in by the platform (e.g. `serve`) imports its dependencies when it runs.
        plugged_in = args.func.__module__.partition(".")[0] != "liftplace"
        if not plugged_in or (exc.name or "").partition(".")[0] in OWN_PACKAGES:
            raise
        return _platform_missing(args.command, exc)


if __name__ == "__main__":
    sys.exit(main())
