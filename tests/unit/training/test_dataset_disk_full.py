"""A full disk while storing a dataset: 507 in the error shape, nothing left behind."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import Settings
from app.db import Database, open_database
from app.errors import SwitchyardError
from app.training import datasets as datasets_module
from app.training.datasets import DatasetService

ROWS = b"".join(
    json.dumps({"text": f"row {i}", "label": "ab"[i % 2]}).encode() + b"\n" for i in range(6)
)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[DatasetService]:
    cfg = Settings(store=tmp_path / "store", _env_file=None)
    db: Database = open_database(cfg)
    yield DatasetService(db, cfg)
    db.dispose()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix == ".jsonl")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_507_and_stores_nothing(
    service: DatasetService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def full(_fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(datasets_module.os, "fsync", full)
    with pytest.raises(SwitchyardError) as err:
        service.create("train.jsonl", ROWS)
    assert (err.value.status, err.value.code) == (507, "insufficient_storage")
    assert str(tmp_path) not in err.value.message
    assert _files(tmp_path / "store") == []
    assert service.list() == []


def test_other_os_errors_are_not_disguised(
    service: DatasetService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(datasets_module.os, "fsync", broken)
    with pytest.raises(OSError) as err:
        service.create("train.jsonl", ROWS)
    assert not isinstance(err.value, SwitchyardError)
