"""The API's `featkd_layers` option: validated by the schema, carried to the job spec by name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from liftplace.methods import FEATKD_LAYER_SETS, FEATKD_LAYERS
from server.schemas import DistillOptions, JobCreate, StudyCreate
from worker.spec import JobSpec


def test_featkd_layers_defaults_to_the_library_and_accepts_each_hook_set() -> None:
    assert DistillOptions().featkd_layers == FEATKD_LAYERS
    for layers in FEATKD_LAYER_SETS:
        assert JobCreate(teacher="t", featkd_layers=layers).featkd_layers == layers
        assert StudyCreate(name="s", teachers=["t"], methods=["outkd+featkd"], featkd_layers=layers).featkd_layers \
            == layers
    assert "featkd_layers" in JobSpec.__dataclass_fields__  # the dispatcher passes options the spec knows


@pytest.mark.parametrize("bad", ["all", "", None, 1])
def test_featkd_layers_refuses_other_values(bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        JobCreate(teacher="t", featkd_layers=bad)
    assert [e["loc"] for e in info.value.errors()] == [("featkd_layers",)]
