"""Write a study's results into docs/results.md from a liftplace service's data (no number typed by hand).

Fetches the study (by name), its Table-6 grid (`/api/studies/{id}/table`), its jobs
and its teachers from the REST API, then writes between the markers
``<!-- report:SECTION:begin -->`` and ``<!-- report:SECTION:end -->`` of the results page:
the study and MLflow ids, the teachers with their FID against the real-vs-real FID, the grid,
Welch's t-tests of the paper's method against each baseline under every teacher, a verdict
computed from those numbers, job timings, and a capacity-gap plot (PNG under docs/figures/).
The section's numbers go to a JSON sidecar beside the page (docs/results/SECTION.json), which
``--previous REV`` reads back as commit REV has it (``--previous-section``: another section there, e.g. the
same study run on another machine; both may be repeated, to compare with several runs).

    python scripts/results_report.py --api http://127.0.0.1:8000 --study stability
    python scripts/results_report.py --convergence runs/conv-s/convergence.csv --section convergence
    python scripts/results_report.py --api http://127.0.0.1:8000 --ablation ablation-group-size
    python scripts/results_report.py --fragment gpu.md --section gpu-estimate  # from gpu_estimate.py --markdown

With ``--convergence`` it renders a convergence curve CSV of bench/convergence.py (FID against
steps per method) and copies its plot instead. Needs matplotlib for the plot. The sections are
built by `liftplace.report`; this is its command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from liftplace.client import API_URL_ENV, DEFAULT_API_URL, ServiceClient, ServiceError  # noqa: E402
from liftplace.report import sections  # noqa: E402
from liftplace.report.data import ReportError, ReportSource  # noqa: E402
from liftplace.report.page import sidecar_path, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "docs" / "results.md"
FIGURES = ROOT / "docs" / "figures"


def job_defaults() -> dict[str, Any]:
    """The worker's job spec defaults: the value of every option a study or job leaves unset."""
    from worker.spec import JobSpec

    return {f.name: f.default for f in dataclasses.fields(JobSpec) if f.default is not dataclasses.MISSING}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api", default=os.environ.get(API_URL_ENV, DEFAULT_API_URL))
    p.add_argument("--study", help="study name (or id) on the service")
    p.add_argument("--preset", help="the study preset it ran (its label is shown)")
    p.add_argument("--convergence", type=Path, help="a convergence.csv of bench/convergence.py")
    p.add_argument("--ablation", help="an ablation study preset: its axis values (or its variants' studies) as one "
                                      "table")
    p.add_argument("--presets", nargs="+", help="study preset names: render their plans")
    p.add_argument("--budget", type=int, help="with --convergence: the study's step budget, to compare against")
    p.add_argument("--same-as", help="with --study: another study sharing cells with it; report whether they repeat")
    p.add_argument("--previous", metavar="REV", action="append", default=[],
                   help="with --study: compare with the same section at git commit REV (an earlier run of the same "
                   "command), as its JSON sidecar there has it; repeat it to compare with several")
    p.add_argument("--previous-section", metavar="SECTION", action="append", default=[],
                   help="with --previous: the section to read there (default: this one), e.g. the same study "
                   "published from another machine; one per --previous, in the same order")
    p.add_argument("--compare-only", action="store_true", help="with --study and --same-as: write only the comparison")
    p.add_argument("--fragment", type=Path, help="a Markdown file another script wrote (e.g. bench/gpu_estimate.py "
                   "--markdown): put it in --section as it is")
    p.add_argument("--section", help="marker name in the results page (default: the study name)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    return p


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The option combinations `build` relies on; argparse's error otherwise."""
    from liftplace.studies import STUDY_PRESETS

    if sum(map(bool, (args.convergence, args.presets, args.fragment, args.ablation))) > 1 or not any(
            (args.study, args.convergence, args.presets, args.fragment, args.ablation)):
        p.error("give one of --study, --convergence (optionally with --study), --ablation, --presets and --fragment")
    ablations = [n for n, v in STUDY_PRESETS.items() if len(v.variants) > 1 or any(x.axes for x in v.variants)]
    if args.ablation and args.ablation not in ablations:
        p.error(f"--ablation: expected a study preset with an axis or several variants, one of "
                f"{', '.join(ablations)}; got {args.ablation!r}")
    if args.fragment and not args.section:
        p.error("--fragment needs --section")
    study_only = args.study and not any((args.convergence, args.presets, args.fragment, args.ablation))
    if study_only and args.compare_only and not args.same_as:
        p.error("--compare-only needs --same-as")
    if args.previous_section and not args.previous:
        p.error("--previous-section needs --previous")
    if args.previous_section and len(args.previous_section) != len(args.previous):
        p.error(f"--previous-section: give one per --previous, in the same order, or none (got "
                f"{len(args.previous)} --previous and {len(args.previous_section)} --previous-section)")


def build(args: argparse.Namespace) -> tuple[str, sections.Section | None, Path | None]:
    """The section's name, its content (None: the fragment, copied as it is) and its figure (None: none)."""
    ctx = sections.ReportContext(page=args.results, repo=ROOT, job_defaults=job_defaults())
    source = ReportSource(ServiceClient(args.api))
    if args.ablation:
        section = args.section or args.ablation
        figure = FIGURES / f"{section}.png"
        return section, sections.ablation_section(source, args.ablation, figure, section, ctx), figure
    if args.fragment:
        return args.section, None, None
    if args.presets:
        section = args.section or "presets"
        return section, sections.presets_section(args.presets, section), None
    section = args.section or args.study
    if args.convergence:
        figure = FIGURES / f"{section}.png"
        return section, sections.convergence_section(args.convergence, figure, ctx, args.budget,
                                                     source if args.study else None, args.study), figure
    figure = FIGURES / f"{section}-capacity-gap.png"
    if args.compare_only:
        return section, sections.comparison_section(source, args.study, args.same_as, section), figure
    request = sections.StudyRequest(args.study, section, args.preset, args.same_as, tuple(args.previous),
                                    tuple(args.previous_section))
    return section, sections.study_section(source, request, figure, ctx), figure


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    _check(p, args)
    try:
        section, content, figure = build(args)
    except (ReportError, ServiceError) as exc:
        raise SystemExit(f"results_report.py: {exc}") from None
    if content is None:
        write_section(args.results, section, args.fragment.read_text(), None)
    else:
        write_section(args.results, section, content.markdown, content.numbers)
    wrote = [str(sidecar_path(args.results, section))] if content is not None else []
    wrote += [str(figure)] if figure is not None and figure.is_file() else []
    print(f"wrote section {section!r} of {args.results}" + "".join(f" and {w}" for w in wrote))


if __name__ == "__main__":
    main()
