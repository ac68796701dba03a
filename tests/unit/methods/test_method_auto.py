"""The auto entry: a selector with no files or trainer of its own, accepted on every base."""

from __future__ import annotations

from app.methods import METHODS, decoder_methods
from app.methods.auto import AUTO


def test_auto_is_a_selector() -> None:
    assert AUTO.files is None and AUTO.trainer is None and AUTO.causal is None
    assert AUTO.traits.bases == frozenset({"encoder", "decoder"})


def test_auto_trains_generation_but_serves_nothing_itself() -> None:
    assert "auto" in decoder_methods(stored=False)
    assert decoder_methods(stored=True) == ("lora", "prefix")


def test_auto_is_listed_first_the_default() -> None:
    assert list(METHODS) == [
        "auto", "lora", "prefix", "prompt", "ia3", "linear_probe", "contrastive"
    ]  # fmt: skip
