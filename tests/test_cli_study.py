"""`liftplace study run`'s table options and `print_tables`, against a stand-in client (no service)."""

from __future__ import annotations

import argparse

import pytest

from liftplace import cli_study
from liftplace.tables import TERMINAL_WIDTH


def _run_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="liftplace")
    cli_study.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["study", "run", "smoke", *argv])


def test_the_compact_table_is_the_default_and_wide_asks_for_every_try() -> None:
    args = _run_args()
    assert (args.wide, args.format) == (False, "text")
    assert _run_args("--wide").wide is True
    assert _run_args("--format", "csv").format == "csv"
    with pytest.raises(SystemExit):
        _run_args("--format", "html")


class _Client:
    """The answers print_tables reads: the study, its table (JSON, or rendered by the service), and its
    teachers: a shipped one and one trained by a job of the service."""

    def __init__(self) -> None:
        self.rendered: list[str] = []

    def get(self, path: str) -> dict:
        if path.endswith("/table"):
            fids = (12.0, 50.0, 14.0)
            tries = [{"seed": s, "job_id": s, "status": "succeeded", "fid": f} for s, f in enumerate(fids)]
            return {"study_id": 3, "metric": "fid_digits", "teachers": ["stability-digits-s"], "methods": ["outkd"],
                    "cells": [{"teacher": "stability-digits-s", "method": "outkd", "tries": tries}], "best": {}}
        if path == "/api/teachers":
            return [{"name": "stability-digits-s", "source": "shipped", "folder": "stability-digits-s", "job_id": None},
                    {"name": "mine", "source": "preset", "job_id": 7}]
        if path == "/api/jobs/7":
            return {"id": 7, "steps": 300, "fid": 9.876, "options": {"fid_samples": 200, "sample_steps": 20}}
        return {"id": 3, "name": "s", "seeds": [0, 1, 2], "teachers": ["stability-digits-s", "mine"]}

    def table(self, study_id: int, fmt: str) -> str:
        self.rendered.append(fmt)
        return f"every try, as {fmt}"


def test_print_tables_compact_wide_and_formats(capsys: pytest.CaptureFixture[str]) -> None:
    client = _Client()
    cli_study.print_tables(client, [3], "a label")
    out = capsys.readouterr().out
    assert "## Study 3 's' — a label" in out and client.rendered == []
    assert "25.33 ± 21.39 * ×1" in out  # 50 is over the digits default
    assert "over 3 seeds" in out and "fid_digits > 40 or diverged" in out
    assert max(map(len, out.splitlines())) <= TERMINAL_WIDTH
    # the teachers' own FIDs, each with how it was measured: the shipped one's from its provenance
    from liftplace.shipped import provenance

    made = provenance("stability-digits-s")["fid"]
    assert (f"Teachers' own FID:\n  stability-digits-s  {made['value']:.2f} ({made['samples']} samples, "
            f"{made['sample_steps']} DDIM steps)\n  mine                9.88 (200 samples, 20 DDIM steps)\n") in out
    cli_study.print_tables(client, [3], "a label", collapse_fid=60)  # a preset's own threshold
    out = capsys.readouterr().out
    assert "×" not in out.split("\n-")[1].splitlines()[1] and "fid_digits > 60 or diverged" in out
    cli_study.print_tables(client, [3], "a label", wide=True)
    cli_study.print_tables(client, [3], "a label", "latex")
    assert client.rendered == ["md", "latex"] and "every try, as latex" in capsys.readouterr().out
