"""The catalog database: datasets, training jobs and their event logs.

SQLite inside the store by default, any SQLAlchemy URL (Postgres when several replicas share
one catalog) otherwise. Tables are created at start; the models are typed SQLAlchemy 2.x
declarative classes so that mypy checks every column access.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Engine, ForeignKey, Index, String, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from app.config import Settings

JSONDict = dict[str, Any]
JSONList = list[Any]


def utcnow() -> dt.datetime:
    """Timezone-aware now; every timestamp in the catalog is UTC."""
    return dt.datetime.now(dt.timezone.utc)


def iso(value: dt.datetime | None) -> str | None:
    """ISO-8601 UTC with a `Z`, the format of every timestamp in the API."""
    if value is None:
        return None
    # SQLite hands datetimes back without a zone; they were written as UTC.
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


class Model(DeclarativeBase):
    """Declarative base of the catalog tables."""

    type_annotation_map = {
        JSONDict: JSON,
        JSONList: JSON,
        dt.datetime: DateTime(timezone=True),
    }


class Dataset(Model):
    """An uploaded, validated dataset; its rows live in a normalised JSONL file at `path`."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    filename: Mapped[str] = mapped_column(String(256))
    format: Mapped[str] = mapped_column(String(16))
    rows: Mapped[int]
    columns: Mapped[JSONList]
    task: Mapped[str] = mapped_column(String(64))
    label_counts: Mapped[JSONDict]
    bytes: Mapped[int]
    path: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class TrainingJob(Model):
    """One training job: the request as given, its lifecycle and what it produced."""

    __tablename__ = "training_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    adapter: Mapped[str] = mapped_column(String(64), index=True)
    task: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    request: Mapped[JSONDict]
    # Labels (head order), row counts of the split: derived at creation, shown in the job.
    summary: Mapped[JSONDict] = mapped_column(default=dict)
    # The user's hyperparameters until the trainer reports the effective ones.
    hyperparameters: Mapped[JSONDict] = mapped_column(default=dict)
    progress: Mapped[JSONDict] = mapped_column(default=dict)
    metrics: Mapped[JSONList] = mapped_column(default=list)
    best: Mapped[JSONDict | None] = mapped_column(default=None)
    result: Mapped[JSONDict | None] = mapped_column(default=None)
    error: Mapped[JSONDict | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class JobEvent(Model):
    """One line of a job's log: status changes, losses, evaluations."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("training_jobs.id", ondelete="CASCADE")
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[JSONDict] = mapped_column(default=dict)


class Database:
    """An engine and its session factory for one catalog URL."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.engine = _make_engine(url, echo=echo)
        # Objects stay readable after commit: services return plain dicts built from them.
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any exception."""
        with self.sessions() as session, session.begin():
            yield session

    def create_all(self) -> None:
        """Create missing tables; existing ones are left as they are."""
        Model.metadata.create_all(self.engine)

    def dispose(self) -> None:
        """Close pooled connections (at shutdown, or between tests)."""
        self.engine.dispose()


def open_database(settings: Settings) -> Database:
    """The catalog of `settings`, tables created."""
    database = Database(settings.resolved_database_url)
    database.create_all()
    return database


def _make_engine(url: str, *, echo: bool) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, echo=echo, pool_pre_ping=True)
    # Worker threads, request threads and the event stream all share the engine.
    connect_args = {"check_same_thread": False, "timeout": 30}
    if parsed.database in (None, "", ":memory:"):
        # One shared connection, or every session would see its own empty database.
        engine = create_engine(url, echo=echo, connect_args=connect_args, poolclass=StaticPool)
    else:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args=connect_args)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the event stream read while a worker writes; NORMAL sync is safe under WAL;
    # foreign keys make deleting a job delete its events.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()
