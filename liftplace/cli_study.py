"""``liftplace study``: the study presets, and running one through a liftplace service.

    liftplace study list
    liftplace study show stability            # the request bodies it would submit
    liftplace study run stability --api http://127.0.0.1:8000 [--name NAME] [--seeds 0 1] [--no-wait] [--wide]
                                                              [--retrain]

`run` registers the preset's dataset and teachers (teachers that exist are reused by name;
teachers shipped with liftplace are registered from its files, `--retrain` trains them afresh
instead; other missing ones are trained by the service), submits one study per variant (a study name that
exists is followed, not submitted again), shows progress until every job has ended, then
prints each study's table: one row per method, one column per teacher, mean ± std and the
collapses per cell (`liftplace.tables`); `--wide` (or `--format md|csv|latex`) prints every
try instead, the paper's Table-6 layout. Ctrl-C stops following; the jobs go on in the service.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from liftplace.cli import HelpFormatter, number_type
from liftplace.client import (
    API_TOKEN_ENV,
    API_URL_ENV,
    DEFAULT_API_URL,
    ServiceClient,
    ServiceError,
    follow,
    submit_preset,
)
from liftplace.studies import STUDY_PRESET_NAMES, STUDY_PRESETS, StudyPreset, get_study_preset
from liftplace.tables import compact_table, panel_label, tables_from_service

__all__ = ["register", "main", "print_tables"]

_positive_float = number_type(float, "a positive number", lambda v: v > 0)
TABLE_STYLES: tuple[str, ...] = ("text", "md", "csv", "latex")  # text: the compact table; others: every try
_seed = number_type(int, "a seed (an integer >= 0)", lambda v: v >= 0)
SEEDS_HELP = ("student seeds instead of the preset's (e.g. --seeds 0 1: a subset of its cells, to check them on "
              "another machine with results_report.py --previous)")
RETRAIN_HELP = ("train the teachers shipped with liftplace afresh by their recipes (on this machine's CPU or GPU: "
                "a different teacher) instead of registering the shipped files")


def register(subparsers) -> None:
    """Add ``study`` (with list, show, run) to an argparse subparsers object."""
    fmt = HelpFormatter
    p = subparsers.add_parser("study", help="study presets: list them, or run one through a liftplace service",
                              formatter_class=fmt, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="study_command", required=True, metavar="ACTION")

    q = sub.add_parser("list", help="the study presets with their size", formatter_class=fmt)
    q.set_defaults(func=_cmd_list)

    q = sub.add_parser("show", help="print the requests a preset submits (JSON)", formatter_class=fmt)
    q.add_argument("preset", choices=STUDY_PRESET_NAMES, help="study preset")
    q.add_argument("--name", default=None, help="study name (default: the preset's name)")
    q.add_argument("--retrain", action="store_true", help=RETRAIN_HELP)
    q.add_argument("--seeds", type=_seed, nargs="+", default=None, help=SEEDS_HELP)
    q.set_defaults(func=_cmd_show)

    q = sub.add_parser("run", help="submit a preset to a service and follow it to its Table-6 grid",
                       formatter_class=fmt)
    q.add_argument("preset", choices=STUDY_PRESET_NAMES, help="study preset")
    q.add_argument("--api", default=None,
                   help=f"service URL (default: ${API_URL_ENV}, else {DEFAULT_API_URL})")
    q.add_argument("--name", default=None,
                   help="study name (default: the preset's name); an existing study of that name is reused")
    q.add_argument("--retrain", action="store_true", help=RETRAIN_HELP)
    q.add_argument("--seeds", type=_seed, nargs="+", default=None, help=SEEDS_HELP)
    q.add_argument("--no-wait", action="store_true", help="submit and return without following")
    q.add_argument("--timeout", type=_positive_float, default=None, help="seconds to follow before giving up")
    q.add_argument("--connect-timeout", type=_positive_float, default=10.0,
                   help="seconds to wait for the service to answer at all")
    q.add_argument("--wide", action="store_true",
                   help="print every try of every cell (the paper's Table-6 layout), not the mean ± std per cell")
    q.add_argument("--format", choices=TABLE_STYLES, default="text",
                   help="text: the compact table (every try with --wide, as md); md, csv, latex: every try")
    q.set_defaults(func=_cmd_run)


def _cmd_list(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    width = max(len(n) for n in STUDY_PRESET_NAMES)
    for name, preset in STUDY_PRESETS.items():
        gpu = " [GPU]" if preset.needs_gpu else ""
        print(f"{name:<{width}}  {preset.jobs:>4} jobs{gpu}  {preset.description}")
    return 0


def _preset(args: argparse.Namespace) -> StudyPreset:
    """The preset named on the command line, with the seeds of `--seeds` when given."""
    preset = get_study_preset(args.preset)
    return preset if args.seeds is None else dataclasses.replace(preset, seeds=tuple(dict.fromkeys(args.seeds)))


def _cmd_show(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    preset = _preset(args)
    print(json.dumps({
        "label": preset.label,
        "dataset": preset.dataset_request(),
        "teachers": preset.teacher_requests(retrain=args.retrain),
        "studies": preset.study_requests(args.name or preset.name),
    }, indent=2))
    return 0


def print_tables(client: ServiceClient, study_ids: Sequence[int], label: str, fmt: str = "text", *,
                 wide: bool = False, collapse_fid: float | None = None) -> None:
    """Print each study's table, headed by its name and the preset's label.

    fmt "text" (not `wide`): the compact table, its collapses counted with `collapse_fid` (None: the
    study's, as the service reports it); `wide` or fmt md / csv / latex: every try, as the service renders it.
    """
    for study_id in study_ids:
        study = client.get(f"/api/studies/{study_id}")
        print(f"\n## Study {study['id']} {study['name']!r} — {label}\n")
        if wide or fmt != "text":
            print(client.table(study_id, "md" if fmt == "text" else fmt))
            continue
        data = client.get(f"/api/studies/{study_id}/table")
        # one grid per combination of the study's axis values (one grid without axes)
        for axes, table in tables_from_service(data, collapse_fid=collapse_fid or data.get("collapse_threshold")):
            if axes:
                print(f"### {panel_label(axes)}\n")
            print(compact_table(table, seeds=len(study["seeds"])))
        print(teacher_fid_lines(client, study["teachers"]))


def teacher_fid_lines(client: ServiceClient, names: Sequence[str]) -> str:
    """The teachers' own FIDs, one line each with the samples and DDIM steps it was measured with (a
    trained teacher's from its training job, a shipped one's from its provenance), to read the students against."""
    from liftplace import defaults
    from liftplace.report.compute import teacher_row
    from liftplace.report.data import ReportSource, fetch_teachers

    unset = {"fid_samples": defaults.FID_SAMPLES, "sample_steps": defaults.DDIM_STEPS}
    teachers = fetch_teachers(ReportSource(client), list(names))
    rows = [teacher_row(t.name, t.record, t.job, None, unset) for t in teachers]
    width = max((len(r.name) for r in rows), default=0)
    lines = ["Teachers' own FID:"]
    for r in rows:
        fid = "no FID" if r.fid is None else f"{r.fid:.2f} ({r.fid_samples} samples, {r.sample_steps} DDIM steps)"
        lines.append(f"  {r.name.ljust(width)}  {fid}")
    return "\n".join(lines) + "\n"


def _cmd_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    preset = _preset(args)
    client = ServiceClient(args.api)
    print(f"{preset.name}: {preset.description} ({preset.label})", flush=True)
    try:
        client.wait_ready(timeout=args.connect_timeout)
        runs = submit_preset(client, preset, args.name, note=lambda line: print(line, flush=True),
                             retrain=args.retrain)
        if args.no_wait:
            return 0
        follow(client, runs, teachers=[t.name for t in preset.teachers], timeout=args.timeout)
        print_tables(client, [r.study_id for r in runs], preset.label, args.format, wide=args.wide,
                     collapse_fid=preset.collapse_fid)
    except ServiceError as exc:
        hint = f" (set ${API_TOKEN_ENV})" if exc.status == 401 else ""
        print(f"study run: {exc}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopped following; the jobs go on in the service", file=sys.stderr)
        return 130
    except (TimeoutError, ValueError) as exc:  # ValueError: a table the library cannot read (e.g. its metric)
        print(f"study run: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="liftplace")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args, parser) or 0)


if __name__ == "__main__":
    sys.exit(main())
