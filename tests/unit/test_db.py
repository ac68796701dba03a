"""The catalog database: tables, SQLite settings, JSON columns, cascades, timestamps.

The catalog's behaviour is tested on both backends it supports: a SQLite file and a fresh
schema on the local PostgreSQL server (`catalog` fixture).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

from app.config import Settings
from app.db import Database, Dataset, JobEvent, TrainingJob, iso, open_database
from tests.unit.scaleout.pgtools import BACKENDS, migrated_catalog


def _settings(tmp_path: Path) -> Settings:
    return Settings(store=tmp_path / "store", _env_file=None)


def _job(job_id: str = "job_1") -> TrainingJob:
    return TrainingJob(
        id=job_id,
        adapter="sst2",
        task="classification",
        method="lora",
        status="queued",
        request={"adapter": "sst2", "examples": [{"text": "a", "label": "x"}]},
    )


@pytest.fixture(params=BACKENDS)
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty catalog on SQLite and on PostgreSQL."""
    with migrated_catalog(str(request.param), str(tmp_path)) as db:
        yield db


def test_open_database_creates_the_file_in_the_store_and_all_tables(tmp_path: Path) -> None:
    db = open_database(_settings(tmp_path))
    assert (tmp_path / "store" / "switchyard.db").is_file()
    assert {"datasets", "training_jobs", "job_events"} <= set(inspect(db.engine).get_table_names())
    db.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    db = open_database(_settings(tmp_path))
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    db.dispose()


def test_json_columns_round_trip_and_defaults_apply(catalog: Database) -> None:
    db = catalog
    with db.session() as session:
        session.add(_job())
    with db.session() as session:
        job = session.get(TrainingJob, "job_1")
        assert job is not None
        assert job.request["examples"] == [{"text": "a", "label": "x"}]
        assert job.metrics == [] and job.progress == {} and job.best is None
        assert job.created_at is not None and job.started_at is None
    db.dispose()


def test_deleting_a_job_deletes_its_events(catalog: Database) -> None:
    db = catalog
    with db.session() as session:
        session.add(_job())
        session.flush()
        session.add(JobEvent(job_id="job_1", kind="loss", data={"loss": 0.5}))
        session.add(JobEvent(job_id="job_1", kind="status", data={"status": "queued"}))
    with db.session() as session:
        assert len(session.scalars(select(JobEvent)).all()) == 2
        job = session.get(TrainingJob, "job_1")
        session.delete(job)
    with db.session() as session:
        assert session.scalars(select(JobEvent)).all() == []
    db.dispose()


def test_a_failed_session_rolls_back(catalog: Database) -> None:
    db = catalog
    try:
        with db.session() as session:
            session.add(_job())
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    with db.session() as session:
        assert session.get(TrainingJob, "job_1") is None
    db.dispose()


def test_in_memory_sqlite_shares_one_database_across_sessions() -> None:
    db = Database("sqlite://")
    db.migrate()
    _add_dataset(db)
    with db.session() as session:
        record = session.get(Dataset, "ds_1")
        assert record is not None and record.label_counts == {"a": 1}
    db.dispose()


def test_datasets_round_trip_on_both_backends(catalog: Database) -> None:
    _add_dataset(catalog)
    with catalog.session() as session:
        record = session.get(Dataset, "ds_1")
        assert record is not None and record.columns == ["text"] and record.rows == 1
        assert iso(record.created_at) is not None


def _add_dataset(db: Database) -> None:
    with db.session() as session:
        session.add(
            Dataset(
                id="ds_1",
                name="n",
                filename="f.jsonl",
                format="jsonl",
                rows=1,
                columns=["text"],
                task="classification",
                label_counts={"a": 1},
                bytes=10,
                path="/x",
            )
        )


def test_iso_renders_utc_with_z_for_naive_and_aware_times() -> None:
    aware = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert iso(aware) == "2024-05-01T10:00:00.123Z"
    assert iso(dt.datetime(2024, 5, 1, 10, 0, 0)) == "2024-05-01T10:00:00.000Z"
    assert iso(None) is None
