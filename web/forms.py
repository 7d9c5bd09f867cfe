"""Form fields built from the API's request schemas, so the forms show the API's own defaults and limits.

A `FieldSpec` says how to render one input: its kind (int, float, bool, choice, text), default,
bounds and help. The values are read from the pydantic models of `server.schemas` (which read
them from `liftplace.defaults` / `liftplace.methods`); nothing here restates a default or a limit.
The browser sends what is typed as it is (numbers parsed, anything else as text), and the
server's 422 answer is shown next to the field, so there is one set of validation rules.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from server.schemas import OPTION_FIELDS

# How a field is labelled and explained in the forms (what the schema's descriptions do not say).
LABELS: dict[str, str] = {
    "name": "Name",
    "teacher": "Teacher",
    "teachers": "Teachers",
    "method": "Method",
    "methods": "Methods",
    "seed": "Seed",
    "seeds": "Seeds",
    "student_ratio": "Student ratio",
    "student_teacher": "Student pruned from",
    "steps": "Steps",
    "dataset": "Dataset",
    "resolution": "Resolution",
    "batch_size": "Batch size",
    "lr": "Learning rate",
    "lr_schedule": "LR schedule",
    "checkpoint_every": "Checkpoint every",
    "importance": "Pruning importance",
    "group_size": "PLACE group size K",
    "coarse": "Coarse distance",
    "curriculum": "Curriculum (adaptive w)",
    "ablation": "Ablation",
    "reduction": "Reduction",
    "lambda_kd": "λ_kd",
    "lambda_feat": "λ_feat",
    "fid_samples": "FID samples",
    "sample_steps": "DDIM steps",
    "preset": "Preset",
    "folder": "Folder",
    "base_teacher": "Base teacher",
    "prune_ratio": "Prune ratio",
}
HELP: dict[str, str] = {
    "student_ratio": "fraction of each prunable layer's channels removed (Diff-Pruning); 0.9 leaves a few percent",
    "seeds": "a count n (seeds 0..n-1) or a list such as 0, 1, 2",
    "seed": "one seed: data order, pruning and initialisation",
    "batch_size": "images per step",
    "lr": "Adam learning rate",
    "importance": "how Diff-Pruning ranks channels",
    "coarse": "distance of the coarse term: L1 (paper) or L2",
    "curriculum": "off: w = 1 from the first step",
    "ablation": "train with one LIFT term only",
    "reduction": "sum over pixels (pixel DDPM) or mean (latent)",
    "folder": "sub-folder of the teachers root (default: the name)",
    "prune_ratio": "fraction of channels removed from the base teacher",
    "student_teacher": "prune the student from this teacher instead (one fixed student for several teachers, "
                       "as in the paper's capacity study)",
}


@dataclass(frozen=True)
class FieldSpec:
    """How one input is rendered: `kind` is int, float, bool, choice, list or text."""

    name: str
    label: str
    kind: str
    default: Any = None
    optional: bool = False  # null allowed: an empty input means "the server's default"
    minimum: float | None = None
    maximum: float | None = None
    exclusive: tuple[bool, bool] = (False, False)  # (minimum, maximum) excluded
    choices: tuple[Any, ...] = ()
    help: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def default_text(self) -> str:
        if self.default is None:
            return ""
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return str(self.default)

    @property
    def bounds_text(self) -> str:
        """'1 ≤ x ≤ 4096', '0 < x < 1', '≥ 0' (empty without bounds)."""
        lo_op = "<" if self.exclusive[0] else "≤"
        hi_op = "<" if self.exclusive[1] else "≤"
        lo = _number(self.minimum)
        # A 32-bit ceiling (seeds) is a storage limit, not a choice anybody makes: not shown.
        hi = _number(self.maximum) if self.maximum is not None and self.maximum < 2**31 - 1 else ""
        if lo and hi:
            return f"{lo} {lo_op} x {hi_op} {hi}"
        if lo:
            return f"{'>' if self.exclusive[0] else '≥'} {lo}"
        if hi:
            return f"{hi_op} {hi}"
        return ""


def _number(x: float | None) -> str:
    """A bound as people read it: 10,000,000 rather than 1e+07."""
    if x is None:
        return ""
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else annotation), True
    return annotation, False


def field_spec(model: type[BaseModel], name: str) -> FieldSpec:
    """The FieldSpec of `model.name`, from its annotation, default, constraints and description."""
    info = model.model_fields[name]
    annotation, optional = _strip_optional(info.annotation)
    choices: tuple[Any, ...] = ()
    if typing.get_origin(annotation) is typing.Literal:
        kind, choices = "choice", typing.get_args(annotation)
    elif annotation is bool:
        kind = "bool"
    elif annotation is int:
        kind = "int"
    elif annotation is float:
        kind = "float"
    elif typing.get_origin(annotation) is list:
        kind = "list"  # typed as "0, 1, 2"; a single number is sent as a number (seeds: a count)
    else:
        kind = "text"
    lo = hi = None
    ex_lo = ex_hi = False
    extra: dict[str, Any] = {}
    for m in info.metadata:
        if isinstance(m, Ge):
            lo = m.ge
        elif isinstance(m, Gt):
            lo, ex_lo = m.gt, True
        elif isinstance(m, Le):
            hi = m.le
        elif isinstance(m, Lt):
            hi, ex_hi = m.lt, True
        elif isinstance(m, MaxLen):
            extra["maxlength"] = m.max_length
    default = None if info.default is PydanticUndefined else info.default
    help_text = HELP.get(name) or info.description or ""
    return FieldSpec(name=name, label=LABELS.get(name, name.replace("_", " ")), kind=kind, default=default,
                     optional=optional, minimum=lo, maximum=hi, exclusive=(ex_lo, ex_hi), choices=choices,
                     help=help_text, extra=extra)


def specs(model: type[BaseModel], names: typing.Iterable[str]) -> dict[str, FieldSpec]:
    return {n: field_spec(model, n) for n in names}


# The distillation options behind the "advanced" fold of the job and study forms (every option the
# API stores for a job, in the schema's order).
ADVANCED_FIELDS: tuple[str, ...] = OPTION_FIELDS
