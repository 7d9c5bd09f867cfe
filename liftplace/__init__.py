"""liftplace: stable knowledge distillation of tiny diffusion models (LIFT and PLACE).

The names below load on first use (PEP 562 module `__getattr__`, as diffusers does), so that
`import liftplace` and the torch-free modules (`liftplace.defaults`, `liftplace.methods`,
`liftplace.presets`, `liftplace.studies`, `liftplace.config`) never import torch:
`from liftplace import lift_place` loads the losses (and torch) then.
"""

from __future__ import annotations

import importlib as _importlib
import types as _types
import typing as _typing

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY: dict[str, str] = {
    "FeatureKD": "liftplace.losses",
    "LiftPlaceOutput": "liftplace.losses",
    "diffusion_loss": "liftplace.losses",
    "lift_place": "liftplace.losses",
    "outkd": "liftplace.losses",
    "METHODS": "liftplace.methods",
    "METHOD_NAMES": "liftplace.methods",
    "PAPER_METHOD": "liftplace.methods",
    "get_method": "liftplace.methods",
    "TeacherConfig": "liftplace.config",
    "DistillConfig": "liftplace.config",
}

__all__ = [  # the keys of _LAZY, written out so that linters see them
    "DistillConfig",
    "FeatureKD",
    "LiftPlaceOutput",
    "METHODS",
    "METHOD_NAMES",
    "PAPER_METHOD",
    "TeacherConfig",
    "diffusion_loss",
    "get_method",
    "lift_place",
    "outkd",
    "__version__",
]

if _typing.TYPE_CHECKING:  # what static analysers and IDEs see
    from liftplace.config import DistillConfig, TeacherConfig
    from liftplace.losses import FeatureKD, LiftPlaceOutput, diffusion_loss, lift_place, outkd
    from liftplace.methods import METHOD_NAMES, METHODS, PAPER_METHOD, get_method


def __getattr__(name: str) -> object:
    """Load a public name (or a submodule, e.g. `liftplace.training`) the first time it is asked for."""
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name.startswith("_"):  # dunder probes (pickle, doctest, inspect) are never submodules
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return _importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":  # the submodule exists but one of its imports is missing
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names (loaded or not), the submodules loaded so far, and the module's dunders."""
    g = globals()
    loaded = {n for n, v in g.items() if isinstance(v, _types.ModuleType) and v.__name__.startswith(f"{__name__}.")}
    return sorted(set(__all__) | loaded | {n for n in g if n.startswith("__")})
