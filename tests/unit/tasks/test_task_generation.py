"""The generation task object: prompt/completion and chat rows, decoder bases, its methods."""

from __future__ import annotations

import pytest

from app.errors import SwitchyardError
from app.tasks import check_base, generation
from app.tasks.base import RowProblem

TASK = generation.TASK


def test_both_row_shapes_and_every_chat_role_are_accepted() -> None:
    assert TASK.check_row({"prompt": "", "completion": "4"}) == {"prompt": "", "completion": "4"}
    chat = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "time?"},
        {"role": "tool", "content": "12:00"},  # the serving side's roles, one definition
        {"role": "assistant", "content": "noon"},
    ]
    assert TASK.check_row({"messages": chat}) == {"messages": chat}
    assert generation.MESSAGE_ROLES == ("system", "user", "assistant", "tool")


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "non-empty assistant message"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "role must be one of"),
        ({"messages": [], "prompt": "x"}, "not both"),
        ({"prompt": "x", "completion": " "}, "completion must be a non-empty string"),
    ],
)
def test_bad_rows_say_what_is_wrong(row: dict[str, object], fragment: str) -> None:
    with pytest.raises(RowProblem, match=fragment):
        TASK.check_row(row)


def test_decoder_only_with_its_methods_and_no_head() -> None:
    assert check_base(TASK.name, "decoder") is TASK
    with pytest.raises(SwitchyardError, match="generation needs a decoder base"):
        check_base(TASK.name, "encoder")
    assert TASK.methods == ("lora", "prefix", "auto")
    assert TASK.head_size(["x"]) == 0 and TASK.row_labels({"prompt": "a"}) == []
    assert TASK.strata([{}, {}]) == [None, None]
