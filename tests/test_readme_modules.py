"""The README's module tables name every module of the four packages, so a newcomer reading them finds
where each thing lives (a module added without a line there fails here, naming it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("liftplace", "server", "worker", "web")


def named_in_readme(text: str) -> set[str]:
    """Paths a table row's first cell names: `pkg/a.py`, then `b.py` as pkg/b.py (the row's folder),
    or a folder (`liftplace/report/`) that stands for every module in it."""
    named: set[str] = set()
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        folder = None
        for item in (i.rstrip("/") for i in re.findall(r"`([^`]+)`", line.split("|")[1])):
            if "/" in item:  # a path from the root: its folder is the row's
                folder = item.rsplit("/", 1)[0]
                named.add(item)
            elif folder:  # a name in the row's folder: a module, or a folder of them (`migrations/`)
                named.add(f"{folder}/{item}")
    return named


def test_named_in_readme_reads_a_row_the_way_a_reader_does() -> None:
    row = ("| `server/api/jobs.py`, `ready.py` | x |\n| `liftplace/report/` | y |\n"
           "| `server/db.py`, `migrations/` | z |\n| not a module | `a.py` |")
    assert named_in_readme(row) == {"server/api/jobs.py", "server/api/ready.py", "liftplace/report", "server/db.py",
                                    "server/migrations"}


def test_every_module_has_a_line_in_the_readme() -> None:
    named = named_in_readme((ROOT / "README.md").read_text())
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if path.name == "__init__.py" or "versions" in rel.parts:  # package markers, Alembic revisions
                continue
            if not any(str(rel) == n or str(rel).startswith(n + "/") for n in named):
                missing.append(str(rel))
    assert not missing, f"modules without a line in the README's module tables: {missing}"
