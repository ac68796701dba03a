"""The local PostgreSQL server (127.0.0.1:5432, trust auth) for the catalog tests: a fresh
schema of database `test` per test, dropped after, so runs never see each other's rows.

Tests that need the server skip when none answers, except in CI (`CI` set), where a missing
server is a failure: there the shared catalog must be tested for real.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from app.db import Database

PG_HOST, PG_PORT = "127.0.0.1", 5432


def pg_reachable() -> bool:
    """Whether psycopg is installed and something listens on the server's port."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False
    with contextlib.suppress(OSError), socket.create_connection((PG_HOST, PG_PORT), timeout=1):
        return True
    return False


needs_pg = pytest.mark.skipif(
    not pg_reachable() and not os.environ.get("CI"),
    reason="no PostgreSQL on 127.0.0.1:5432 (CI fails instead of skipping)",
)


def pg_url(schema: str, port: int = PG_PORT) -> str:
    """A SQLAlchemy URL whose search_path is `schema` (tables and alembic_version land there)."""
    return f"postgresql://postgres@{PG_HOST}:{port}/test?options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def fresh_schema() -> Iterator[str]:
    """A new, empty schema in database `test`; dropped with everything in it afterwards."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=test"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
        try:
            yield name
        finally:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


@contextlib.contextmanager
def catalog_url(backend: str, tmp_dir: str) -> Iterator[str]:
    """A fresh, empty catalog URL: a SQLite file under `tmp_dir`, or a PostgreSQL schema."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_dir}/catalog.db"
        return
    with fresh_schema() as schema:
        yield pg_url(schema)


@contextlib.contextmanager
def migrated_catalog(backend: str, tmp_dir: str) -> Iterator[Database]:
    """A fresh catalog on `backend`, migrated to the newest revision; disposed afterwards."""
    with catalog_url(backend, tmp_dir) as url:
        db = Database(url)
        db.migrate()
        try:
            yield db
        finally:
            db.dispose()


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=needs_pg),
]
