"""The contrastive entry: training-only, single-label classification, stored as a pooled-head
LoRA that the catalog lists under its own name."""

from __future__ import annotations

import pytest

from app.base import FrozenBase
from app.errors import SwitchyardError
from app.methods import METHODS, shown_method
from app.methods.contrastive import CONTRASTIVE
from app.tasks import CLASSIFICATION, REGRESSION
from app.training.preflight import preflight
from app.training.types import TrainingPlan


def test_contrastive_writes_lora_files_it_has_none_of_its_own() -> None:
    assert CONTRASTIVE.files is None and CONTRASTIVE.trainer is None
    stored = METHODS[CONTRASTIVE.traits.stored_as or ""]
    assert stored.files is not None and stored.traits.pooled_head


def test_catalog_shows_a_marked_pooled_lora_as_contrastive() -> None:
    marked = {"peft_type": "LORA", "switchyard_method": "contrastive", "layers": [-1]}
    assert shown_method(marked, "lora") == "contrastive"
    # without a pooled read-out, or marked with a name that is not a training-only method
    assert shown_method(marked, "ia3") == "ia3"
    assert shown_method({"peft_type": "LORA", "switchyard_method": "contrastive"}, "lora") == (
        "lora"
    )
    assert shown_method({**marked, "switchyard_method": "linear_probe"}, "lora") == "lora"
    assert shown_method({**marked, "switchyard_method": ["x"]}, "lora") == "lora"


def test_contrastive_refuses_tasks_other_than_single_label(tiny_base: FrozenBase) -> None:
    plan = TrainingPlan(
        adapter="a", task=REGRESSION, method="contrastive",
        train_rows=[], validation_rows=[], labels=[],
    )  # fmt: skip
    with pytest.raises(SwitchyardError) as info:
        preflight(plan, base=tiny_base, max_rank=64, max_tokens=64)
    assert info.value.code == "unsupported_task" and info.value.param == "task"
    assert "single-label classification" in info.value.message
    assert CONTRASTIVE.traits.tasks == frozenset({CLASSIFICATION})
