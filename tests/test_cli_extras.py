"""The platform commands (`serve`, `demo`) installed without the `platform` extra: one line, not a traceback.

Each case runs `liftplace` in a subprocess where a module of the extra is made unimportable
(`sys.modules[name] = None` makes `import name` raise ModuleNotFoundError), as in an install without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HINT = "pip install 'liftplace[platform]'"


def run_without(module: str, *args: str) -> subprocess.CompletedProcess:
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            f"from liftplace.cli import main\nsys.exit(main({list(args)!r}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_serve_without_uvicorn_names_the_extra_in_one_line():
    # server.cli loads without the extra; `serve` imports uvicorn when it runs
    result = run_without("uvicorn", "serve", "--port", "8123")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert "liftplace serve:" in result.stderr and "uvicorn" in result.stderr and HINT in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("args", [("demo", "--exit-when-done"), ("demo", "--help")])
def test_demo_that_cannot_load_names_the_extra_in_one_line(args):
    # server.demo imports the server's settings (pydantic) when its entry point loads
    result = run_without("pydantic", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert "liftplace demo:" in result.stderr and "pydantic" in result.stderr and HINT in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_help_lists_an_unavailable_command_with_the_extra():
    result = run_without("pydantic", "--help")
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout and HINT in result.stdout


def test_a_missing_module_of_the_project_itself_still_raises():
    # Not an extra to install but a broken checkout: keep the traceback.
    result = run_without("server.app", "serve")
    assert result.returncode == 1
    assert "ModuleNotFoundError" in result.stderr and HINT not in result.stderr
