"""A failed job's error never carries what a bug's exception text may hold (paths, reprs)."""

from __future__ import annotations

from app.training.jobs import failure


def test_an_unexpected_failure_names_only_its_type() -> None:
    bug = ValueError("cannot open /srv/secret/store/adapters/x: BertModel(\n  (embeddings)...")
    error = failure(bug, "job-1")
    assert error["code"] == "internal_error"
    assert "ValueError" in error["message"] and "job-1" in error["message"]
    assert "/srv" not in error["message"] and "BertModel" not in error["message"]
