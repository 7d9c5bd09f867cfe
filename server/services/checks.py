"""The checks of a request that need the database or the runtime limits, answered as 422s.

The schemas (`server.schemas`) check what a body can say on its own; these check it against
what is registered (teachers, datasets) and configured (LIFTPLACE_MAX_STEPS), naming the field
in FastAPI's own 422 shape (`server.schemas.invalid`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from liftplace import defaults
from liftplace.methods import get_method
from server.errors import Conflict
from server.models import Dataset, Teacher
from server.schemas import OPTION_FIELDS, DistillOptions, invalid
from server.settings import Settings


def check_steps(settings: Settings, steps: int, field: str | tuple[str | int, ...] = "steps") -> None:
    if steps > settings.max_steps:
        label = field if isinstance(field, str) else ".".join(map(str, field))
        raise invalid(field, f"{label}: {steps} is over the limit of {settings.max_steps} steps per job "
                             "(LIFTPLACE_MAX_STEPS)", steps)


def get_dataset(session: Session, name: str, field: str = "dataset") -> Dataset:
    """The registered dataset `name`; 422 on `field` naming the registered ones otherwise."""
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        known = ", ".join(session.scalars(select(Dataset.name).order_by(Dataset.name)))
        raise invalid(field, f"{field}: unknown dataset {name!r}; registered: {known}", name)
    return dataset


def get_usable_teacher(session: Session, name: str, field: str | tuple[str | int, ...] = "teacher") -> Teacher:
    """A registered teacher that is ready or still training (jobs wait for it); 422 otherwise."""
    label = field if isinstance(field, str) else field[0]
    teacher = session.scalar(select(Teacher).where(Teacher.name == name))
    if teacher is None:
        known = ", ".join(session.scalars(select(Teacher.name).order_by(Teacher.name))) or "none yet"
        raise invalid(field, f"{label}: unknown teacher {name!r}; registered: {known}", name)
    if teacher.status == "failed":
        raise invalid(field, f"{label}: teacher {name!r} failed to train ({teacher.reason}); retry its training "
                             "job first", name)
    return teacher


def get_student_teacher(session: Session, name: str | None) -> Teacher | None:
    """The teacher a student is pruned from when it is not the distilling one (None: that one)."""
    return None if name is None else get_usable_teacher(session, name, "student_teacher")


def image_size(dataset: Dataset, resolution: int | None) -> int:
    """The side of the training images, pixels: the request's, else the dataset's, else the digits'."""
    return resolution or dataset.resolution or defaults.DIGITS_RESOLUTION


def check_distill_options(body: DistillOptions, dataset: Dataset, methods: list[str]) -> None:
    """Checks that need the dataset: image size, PLACE group size."""
    size = image_size(dataset, body.resolution)
    if dataset.kind == "embedded" and size % 8 != 0:
        raise invalid("resolution", f"resolution: the digits data needs a multiple of 8, got {size}", size)
    if any(get_method(m).uses_place for m in methods):
        check_group_size(body.group_size, size)


def check_group_size(group_size: int | None, size: int, field: str | tuple[str | int, ...] = "group_size") -> None:
    """PLACE's groups must tile the image: K divides the size x size positions (None: one group)."""
    positions = size * size
    if group_size is not None and positions % group_size != 0:
        label = field if isinstance(field, str) else ".".join(map(str, field))
        raise invalid(field, f"{label}: {group_size} does not divide the {positions} positions of "
                             f"a {size}x{size} image (PLACE groups must tile it)", group_size)


def options_of(body: DistillOptions) -> dict[str, Any]:
    """The options a job stores in `Job.options` (OPTION_FIELDS)."""
    return body.model_dump(include=set(OPTION_FIELDS))


@contextmanager
def unique_or_conflict(session: Session, detail: str) -> Iterator[None]:
    """Flush inside: a unique name taken meanwhile by a concurrent request is a Conflict (409), not a 500.

    The services check the name first; this covers the race between that check and the insert.
    """
    try:
        yield
    except IntegrityError:
        session.rollback()
        raise Conflict(detail) from None
