"""What may be imported without torch (the server, the CLI's parser, scripts), each in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TORCH_FREE = [
    "import liftplace",
    "import liftplace.defaults",
    "import liftplace.methods",
    "import liftplace.presets",
    "import liftplace.studies",
    "import liftplace.config",
    "import worker",
    "import worker.spec",
    "from liftplace import METHODS, METHOD_NAMES, PAPER_METHOD, get_method, DistillConfig, TeacherConfig",
    "import liftplace; liftplace.defaults.GROUP_SIZE",  # a submodule reached as an attribute
    # bench/convergence.py's module level (what --help needs): its docstring says it loads no torch
    "import importlib.util as u; s = u.spec_from_file_location('conv', 'bench/convergence.py'); "
    "s.loader.exec_module(u.module_from_spec(s))",
]


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("statement", TORCH_FREE)
def test_imports_no_torch(statement: str) -> None:
    proc = _python(f"{statement}\nimport sys\nprint('torch' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False", f"{statement!r} imported torch"


def test_the_public_names_still_load_and_are_listed() -> None:
    code = (
        "import sys, liftplace\n"
        "from liftplace import lift_place, outkd, diffusion_loss, FeatureKD, LiftPlaceOutput\n"
        "import liftplace.losses as losses\n"
        "assert lift_place is losses.lift_place and liftplace.outkd is losses.outkd\n"
        "assert all(hasattr(liftplace, n) for n in liftplace.__all__)\n"
        "assert set(liftplace.__all__) <= set(dir(liftplace))\n"
        "assert liftplace.__version__\n"
        "print('torch' in sys.modules)\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"  # the losses need torch, and load it when asked for


def test_an_unknown_name_is_an_attribute_error() -> None:
    import liftplace

    with pytest.raises(AttributeError, match="no_such_name"):
        liftplace.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        from liftplace import no_such_name  # noqa: F401
    assert not hasattr(liftplace, "__wrapped__")  # dunder probes (doctest, inspect) find nothing
