"""The server's layers, read from the source: routers call services and never each other nor the
dispatcher; the dispatcher never reaches a router; the UI is added only by the entry points."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROUTERS = sorted(p for p in (ROOT / "server" / "api").glob("*.py") if p.name != "__init__.py")
ROUTER_MODULES = {f"server.api.{p.stem}" for p in ROUTERS}
# Where the browser UI may be composed with the API: the command-line entry points only.
UI_COMPOSERS = {"server/cli.py", "server/demo.py"}


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Every module the module at `path` (with `source`, default its text) imports, at the top or inside
    a function: `import a.b` gives a.b, `from a import b` gives a and a.b (b may be a module), relative
    imports resolved."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(x for x in (base, node.module or "") if x)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_the_scan_sees_the_imports_it_checks() -> None:
    assert {p.stem for p in ROUTERS} >= {"jobs", "studies", "teachers", "datasets", "artifacts"}
    assert "server.services.jobs" in imported_modules(ROOT / "server" / "api" / "jobs.py")
    assert "server.services.lifecycle" in imported_modules(ROOT / "server" / "dispatcher.py")
    # what the routers did before the service layer, and relative or function-level imports
    sample = "from server.api.jobs import check_steps\nfrom . import studies\n\ndef f():\n" \
             "    from ..dispatcher import add_log\n"
    found = imported_modules(ROOT / "server" / "api" / "teachers.py", sample)
    assert {"server.api.jobs", "server.api.studies", "server.dispatcher"} <= found


@pytest.mark.parametrize("router", ROUTERS, ids=lambda p: p.stem)
def test_a_router_imports_no_other_router_nor_the_dispatcher(router: Path) -> None:
    imports = imported_modules(router)
    assert not (imports & ROUTER_MODULES) - {f"server.api.{router.stem}"}, imports & ROUTER_MODULES
    assert "server.dispatcher" not in imports
    assert "server.app" not in imports


@pytest.mark.parametrize("path", [ROOT / "server" / "dispatcher.py", *(ROOT / "server" / "services").glob("*.py")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_services_and_the_dispatcher_import_no_router(path: Path) -> None:
    imports = imported_modules(path)
    assert not {m for m in imports if m == "server.api" or m.startswith("server.api.")}, imports


def test_only_the_entry_points_import_the_ui() -> None:
    importers = {str(p.relative_to(ROOT)) for p in (ROOT / "server").rglob("*.py")
                 if any(m == "web" or m.startswith("web.") for m in imported_modules(p))}
    assert importers == UI_COMPOSERS


def test_the_ui_imports_no_router() -> None:
    for path in (ROOT / "web").glob("*.py"):
        imports = imported_modules(path)
        assert not {m for m in imports if m == "server.api" or m.startswith("server.api.")}, (path.name, imports)
