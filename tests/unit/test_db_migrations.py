"""Alembic migrations of the catalog: from an empty database on SQLite and PostgreSQL, from a
SQLite catalog made by the `create_all` code that came before them, and models and scripts
describing one schema."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from app.config import Settings
from app.db import Database, Dataset, JobEvent, Model, TrainingJob, open_database
from app.migrations import current_revision, upgrade
from tests.unit.scaleout.pgtools import BACKENDS, catalog_url, fresh_schema, needs_pg, pg_url

BASELINE_TABLES = {"datasets", "training_jobs", "job_events"}
SHARED_TABLES = {"adapter_versions", "adapter_catalog", "job_leases"}


def _head() -> str:
    from alembic.script import ScriptDirectory

    from app.migrations import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_empty_database_is_migrated_to_head_and_matches_the_models(
    backend: str, tmp_path: Path
) -> None:
    with catalog_url(backend, str(tmp_path)) as url:
        db = Database(url)
        assert current_revision(db.engine) is None
        db.migrate()
        assert current_revision(db.engine) == _head()
        assert set(inspect(db.engine).get_table_names()) >= BASELINE_TABLES | SHARED_TABLES
        with db.engine.connect() as conn:
            # Models and migrations describe the same schema: a column added to one only fails.
            assert compare_metadata(MigrationContext.configure(conn), Model.metadata) == []
        db.migrate()  # a second start finds nothing to do
        assert current_revision(db.engine) == _head()
        db.dispose()


def _create_all_of_before_migrations(url: str) -> None:
    """The catalog as the service made it before Alembic: `create_all` of the three tables."""
    engine = sa.create_engine(url)
    tables = [Model.metadata.tables[name] for name in sorted(BASELINE_TABLES)]
    Model.metadata.create_all(engine, tables=tables)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(Model.metadata.tables["training_jobs"]).values(
                id="job_old",
                adapter="sst2",
                task="classification",
                method="lora",
                status="succeeded",
                request={"adapter": "sst2"},
                summary={},
                hyperparameters={},
                progress={},
                metrics=[],
                created_at=sa.func.current_timestamp(),
            )
        )
    engine.dispose()


def test_a_sqlite_catalog_from_create_all_is_stamped_and_upgraded(tmp_path: Path) -> None:
    settings = Settings(store=tmp_path / "store", _env_file=None)
    settings.store.mkdir(parents=True)
    _create_all_of_before_migrations(settings.resolved_database_url)
    db = open_database(settings)
    assert current_revision(db.engine) == _head()
    assert set(inspect(db.engine).get_table_names()) >= SHARED_TABLES
    with db.session() as session:
        old = session.get(TrainingJob, "job_old")
        assert old is not None and old.status == "succeeded"  # rows survive the upgrade
        session.add(JobEvent(job_id="job_old", kind="status", data={"status": "succeeded"}))
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Model.metadata) == []
    db.dispose()


def test_upgrade_steps_through_each_revision_keeping_rows(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/steps.db")
    upgrade(db.engine, "0001")
    assert current_revision(db.engine) == "0001"
    assert not SHARED_TABLES & set(inspect(db.engine).get_table_names())
    with db.engine.begin() as conn:
        conn.execute(
            sa.insert(Model.metadata.tables["datasets"]).values(
                id="ds_1",
                name="n",
                filename="f.jsonl",
                format="jsonl",
                rows=1,
                columns=["text"],
                task="classification",
                label_counts={"a": 1},
                bytes=1,
                path="/x",
                created_at=sa.func.current_timestamp(),
            )
        )
    db.migrate()
    assert current_revision(db.engine) == _head()
    with db.session() as session:
        assert session.scalars(select(Dataset.id)).all() == ["ds_1"]
    db.dispose()


def test_a_downgrade_to_the_baseline_removes_only_the_shared_tables(tmp_path: Path) -> None:
    from alembic import command

    from app.migrations import alembic_config

    db = Database(f"sqlite:///{tmp_path}/down.db")
    db.migrate()
    with db.engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0001")
    tables = set(inspect(db.engine).get_table_names())
    assert tables >= BASELINE_TABLES and not SHARED_TABLES & tables
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"
    db.dispose()


def _migrate_in_a_process(url: str) -> None:
    db = Database(url)
    db.migrate()
    db.dispose()


@needs_pg
def test_replicas_starting_together_on_postgresql_migrate_once() -> None:
    context = multiprocessing.get_context("spawn")
    with fresh_schema() as schema:
        url = pg_url(schema)
        workers = [context.Process(target=_migrate_in_a_process, args=(url,)) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
            assert worker.exitcode == 0  # the advisory lock: no "relation already exists"
        db = Database(url)
        assert current_revision(db.engine) == _head()
        db.dispose()
