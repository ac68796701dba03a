"""BERT's masking rule (app/training/masking.py) and the corpus windows it masks
(app/training/corpus.py): selection rate, the 80/10/10 split, special tokens never masked,
whole-word groups, and windows that cover a document with the overlap asked for."""

from __future__ import annotations

import itertools

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerBase

from app.tasks.base import IGNORE
from app.training.corpus import Chunking, special_ends, windows
from app.training.masking import Masker

WORDS = ["alpha", "river", "stone", "quietly", "unbelievable", "go", "north", "tokenization"]


def _batch(rows: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 29000, (rows, width), generator=generator)
    special = torch.zeros_like(ids, dtype=torch.bool)
    ids[:, 0], ids[:, -1] = 101, 102
    special[:, 0] = special[:, -1] = True
    return ids, special


def test_about_the_probability_is_selected_and_split_80_10_10(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    ids, special = _batch(200, 128, seed=3)
    masked = Masker(tokenizer, probability=0.15, seed=7).mask(ids, special=special)
    selected = masked.labels != IGNORE
    share = selected.sum() / (~special).sum()
    assert 0.14 < float(share) < 0.16  # 25,000 candidate tokens: 3 sigma is 0.007
    assert torch.equal(masked.labels[selected], ids[selected])  # labels are the originals
    replaced = masked.input_ids[selected]
    to_mask = float((replaced == tokenizer.mask_token_id).float().mean())
    kept = float((replaced == ids[selected]).float().mean())
    assert 0.77 < to_mask < 0.83 and 0.08 < kept < 0.12  # random: the rest, about 10%
    assert torch.equal(masked.input_ids[~selected], ids[~selected])  # others untouched


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    probability=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**31),
    width=st.integers(3, 40),
    whole_word=st.booleans(),
)
def test_special_tokens_and_padding_are_never_masked(
    tokenizer: PreTrainedTokenizerBase, probability: float, seed: int, width: int, whole_word: bool
) -> None:
    ids, special = _batch(4, width, seed)
    special[1, width // 2 :] = True  # padding of a shorter row
    offsets = torch.stack([torch.arange(width) * 2, torch.arange(width) * 2 + 1], dim=-1)
    masker = Masker(tokenizer, probability=probability, whole_word=whole_word, seed=seed)
    masked = masker.mask(ids, special=special, offsets=offsets.expand(4, -1, -1))
    assert (masked.labels[special] == IGNORE).all()
    assert torch.equal(masked.input_ids[special], ids[special])


def test_whole_word_masking_masks_every_piece_of_a_word(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    text = " ".join(WORDS * 4)
    enc = tokenizer([text] * 16, return_offsets_mapping=True, return_special_tokens_mask=True)
    ids = torch.tensor(enc["input_ids"])
    special = torch.tensor(enc["special_tokens_mask"], dtype=torch.bool)
    masker = Masker(tokenizer, probability=0.3, whole_word=True, seed=1)
    masked = masker.mask(ids, special=special, offsets=torch.tensor(enc["offset_mapping"]))
    for row in range(16):
        words = enc.word_ids(row)
        chosen = {words[t] for t in range(ids.shape[1]) if masked.labels[row, t] != IGNORE}
        for t, word in enumerate(words):
            assert (masked.labels[row, t] != IGNORE) == (word in chosen and word is not None)
    assert (masked.labels != IGNORE).any()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=80),
    max_length=st.integers(8, 40),
    stride=st.integers(0, 3),
)
def test_windows_cover_the_document_with_the_overlap_asked_for(
    tokenizer: PreTrainedTokenizerBase, words: list[str], max_length: int, stride: int
) -> None:
    text = " ".join(words)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    found = windows(text, tokenizer, Chunking(max_length=max_length, stride=stride))
    head, tail = special_ends(tokenizer)
    bodies = [w.ids[len(head) : len(w.ids) - len(tail)] for w in found]
    assert all(len(w.ids) <= max_length for w in found)
    assert all(w.special == [1] * len(head) + [0] * len(b) + [1] * len(tail)
               for w, b in zip(found, bodies, strict=True))  # fmt: skip
    rebuilt = list(bodies[0])
    for before, body in itertools.pairwise(bodies):
        assert body[:stride] == before[len(before) - stride :]  # the overlap
        rebuilt += body[stride:]
    assert rebuilt == ids
