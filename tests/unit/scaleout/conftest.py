"""Fixtures of the scale-out tests: a fresh catalog per test on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.db import Database
from tests.unit.scaleout.pgtools import BACKENDS, migrated_catalog


@pytest.fixture(params=BACKENDS)
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty catalog on each backend; disposed after the test."""
    with migrated_catalog(str(request.param), str(tmp_path)) as db:
        yield db
