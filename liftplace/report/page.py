"""The results page's generated sections and their JSON sidecars.

A section sits between ``<!-- report:SECTION:begin -->`` and ``<!-- report:SECTION:end -->``; its
numbers go to ``<page folder>/<page stem>/SECTION.json`` (``docs/results/SECTION.json`` for
``docs/results.md``). A later run compares with an earlier one by reading the sidecar as a commit has
it (``git show REV:docs/results/SECTION.json``), never by reading numbers back out of the Markdown.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from liftplace.report.data import ReportError
from liftplace.tables import format_axis_value

SIDECAR_FORMAT = 1  # bumped when a sidecar's layout changes


def markers(section: str) -> tuple[str, str]:
    return f"<!-- report:{section}:begin -->", f"<!-- report:{section}:end -->"


def replace_section(path: Path, section: str, body: str) -> None:
    """Put `body` between the section's markers (appended at the end with them when the page has none)."""
    begin, end = markers(section)
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def sidecar_path(page: Path, section: str) -> Path:
    """Where a section of `page` keeps its numbers."""
    return page.parent / page.stem / f"{section}.json"


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def write_section(page: Path, section: str, body: str, numbers: dict[str, Any] | None) -> None:
    """Write a section and its sidecar; a section without numbers (a copied fragment) drops a stale sidecar."""
    replace_section(page, section, body)
    sidecar = sidecar_path(page, section)
    if numbers is None:
        sidecar.unlink(missing_ok=True)
        return
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": SIDECAR_FORMAT, "section": section, **_plain(numbers)}
    sidecar.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def _git_show(repo: Path, rev: str, rel: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{rel}"], capture_output=True, text=True)


def read_sidecar(rev: str, page: Path, section: str, repo: Path) -> dict[str, Any]:
    """A section's numbers as commit `rev` has them (`repo`: the git checkout holding `page`).

    ReportError when `rev` is not a readable commit, when the page at `rev` lacks the section, and when
    the section at `rev` predates sidecars (generated before they were written: it has Markdown only).
    """
    try:
        rel_page = page.resolve().relative_to(repo.resolve()).as_posix()
    except ValueError:
        raise ReportError(f"--previous reads the page from git at {rev!r}, so the results page must be a file of "
                          f"the checkout {repo.resolve()}; got {page}") from None
    rel_sidecar = sidecar_path(page, section).resolve().relative_to(repo.resolve()).as_posix()
    found = _git_show(repo, rev, rel_sidecar)
    if found.returncode == 0:
        return json.loads(found.stdout)
    text = _git_show(repo, rev, rel_page)
    if text.returncode != 0:
        raise ReportError(f"--previous: cannot read {rel_page} at {rev!r}: {text.stderr.strip()}")
    if markers(section)[0] not in text.stdout:
        raise ReportError(f"--previous: section {section!r} is not in {rel_page} at {rev}")
    raise ReportError(f"--previous: section {section!r} at {rev} predates the JSON sidecars ({rel_sidecar} is not "
                      "in that commit), so its numbers cannot be read; compare with a commit that has the sidecar "
                      "(written by every run of scripts/results_report.py since the sidecars exist)")


def previous_machine(rev: str, page: Path, section: str, repo: Path) -> str | None:
    """The machine a section at commit `rev` was generated on ("x86_64 (AMD EPYC) with 2 CPUs"): its sidecar's
    `machine`, else the footer of its Markdown (sidecars written before they kept it); None when neither says."""
    return _machine(read_sidecar(rev, page, section, repo), rev, page, section, repo)


def read_previous(rev: str, page: Path, section: str, repo: Path, options: Mapping[str, Any] | None = None
                  ) -> tuple[list[dict[str, Any]], str | None]:
    """A section at commit `rev` as a comparison needs it, its sidecar read once: `previous_cells` and
    `previous_machine`."""
    numbers = read_sidecar(rev, page, section, repo)
    return _cells(numbers, rev, section, options), _machine(numbers, rev, page, section, repo)


def _machine(numbers: Mapping[str, Any], rev: str, page: Path, section: str, repo: Path) -> str | None:
    if numbers.get("machine"):
        return str(numbers["machine"])
    rel_page = page.resolve().relative_to(repo.resolve()).as_posix()
    text = _git_show(repo, rev, rel_page).stdout
    begin, end = markers(section)
    body = text.split(begin, 1)[1].split(end, 1)[0] if begin in text and end in text else ""
    found = re.search(r"report written on (.+?) with (\d+) CPUs", body)
    return f"{found[1]} with {found[2]} CPUs" if found else None


def previous_cells(rev: str, page: Path, section: str, repo: Path,
                   options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The grid cells (as the service gave them) of a study section at commit `rev`.

    An ablation's section (rows of variants) stands in with the rows whose variant's values are all this
    study's `options` (e.g. the regime map's "lr = 0.01, coarse = l1" row for a study run at lr 0.01 with
    the L1 distance), one per teacher and method; each row gets the key `variant`.
    """
    return _cells(read_sidecar(rev, page, section, repo), rev, section, options)


def _cells(numbers: Mapping[str, Any], rev: str, section: str, options: Mapping[str, Any] | None
           ) -> list[dict[str, Any]]:
    if "cells" in numbers:
        return numbers["cells"]
    if "rows" not in numbers or options is None:
        raise ReportError(f"--previous: section {section!r} at {rev} is a {numbers.get('kind')!r} section, "
                          "not a study's grid")
    matching: dict[tuple[str, str], dict[str, Any]] = {}
    for row in numbers["rows"]:
        if not _variant_matches(row.get("variant", ""), options):
            continue
        key = (row["teacher"], row["method"])
        if key in matching:
            raise ReportError(f"--previous: section {section!r} at {rev} has two variants of {key[0]}/{key[1]} "
                              f"that match this study's options ({matching[key]['variant']!r}, {row['variant']!r})")
        matching[key] = {"teacher": row["teacher"], "method": row["method"], "tries": row["tries"],
                         "variant": row["variant"]}
    if not matching:
        raise ReportError(f"--previous: no variant of section {section!r} at {rev} was run with this study's options")
    return list(matching.values())


def _variant_matches(label: str, options: Mapping[str, Any]) -> bool:
    """Whether every "option = value" of an ablation row's variant label (liftplace.tables.panel_label) is
    the study's own value of that option."""
    pairs = [part.split(" = ", 1) for part in label.split(", ")] if label else []
    if not pairs or any(len(p) != 2 for p in pairs):
        return False
    return all(name in options and format_axis_value(options[name]) == value for name, value in pairs)
