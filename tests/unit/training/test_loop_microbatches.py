"""Micro-batches: token tensors cut to their longest row and contiguous; targets kept whole."""

from __future__ import annotations

import torch

from app.training.loop import micro_batches


def test_token_labels_are_cut_and_contiguous() -> None:
    # Regression: sliced token labels were non-contiguous and BERT's loss `.view()` failed.
    ids = torch.ones(8, 10, dtype=torch.long)
    mask = torch.ones(8, 10, dtype=torch.long)
    mask[:, 7:] = 0
    parts = micro_batches({"input_ids": ids, "attention_mask": mask, "labels": ids.clone()}, 20)
    assert len(parts) == 4
    for part in parts:
        assert tuple(part["labels"].shape) == (2, 7) and part["labels"].is_contiguous()
        assert part["labels"].view(-1).numel() == 14


def test_multi_label_targets_keep_every_label_even_as_wide_as_the_tokens() -> None:
    ids = torch.ones(8, 10, dtype=torch.long)
    mask = torch.ones(8, 10, dtype=torch.long)
    mask[:, 5:] = 0
    targets = torch.ones(8, 10)  # ten labels, as many as the padded width
    parts = micro_batches({"input_ids": ids, "attention_mask": mask, "labels": targets}, 20)
    assert all(tuple(p["labels"].shape) == (2, 10) for p in parts)
    assert all(tuple(p["input_ids"].shape) == (2, 5) for p in parts)
