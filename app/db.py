"""The catalog database: datasets, training jobs and their event logs.

SQLite inside the store by default, any SQLAlchemy URL (Postgres when several replicas share
one catalog) otherwise. Alembic migrations (`app/migrations`) bring the tables up to date at
start; the models are typed SQLAlchemy 2.x declarative classes so that mypy checks every
column access, and a test holds the models and the migrations to the same schema.

A catalog that is locked (SQLite held by another writer past the busy timeout) or unreachable
(a PostgreSQL server down) is not a bug: every session maps the driver's connection-level
errors, in this one place, to a 503 `database_unavailable` with `Retry-After`, and the next
session simply tries again, so the service recovers by itself once the database is back. A
database that is down at start only delays the migrations until the first session.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    PrimaryKeyConstraint,
    String,
    create_engine,
    event,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from app.config import Settings
from app.errors import SwitchyardError

log = logging.getLogger(__name__)

# Seconds a client should wait before trying again: a lock is usually gone within one, a
# server that went away takes longer to come back (and each try costs a connect timeout).
RETRY_AFTER_LOCKED_S = 1
RETRY_AFTER_UNREACHABLE_S = 5
DEFAULT_BUSY_TIMEOUT_S = 5.0

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


class AdapterVersionMark(Model):
    """The highest version number a name was ever given: replicas sharing a catalog draw their
    numbers here (an atomic upsert), so two uploads of one name never get the same number."""

    __tablename__ = "adapter_versions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    high_water: Mapped[int]


class AdapterRow(Model):
    """One stored adapter version as every replica sees it: name, number and its metadata
    (switchyard.json). The store's files stay the source of truth; this is their shared index."""

    __tablename__ = "adapter_catalog"
    __table_args__ = (PrimaryKeyConstraint("name", "version", name="pk_adapter_catalog"),)

    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int]
    meta: Mapped[JSONDict]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class JobLease(Model):
    """A training job held by one node until `expires_at`; a node that stops heartbeating loses
    it and the job fails as `interrupted` (never left `running`)."""

    __tablename__ = "job_leases"

    job_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("training_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    node: Mapped[str] = mapped_column(String(256), index=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DatabaseUnavailable(SwitchyardError):
    """503 `database_unavailable`: the catalog is locked or unreachable; retry after a while."""

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(
            503,
            "database_unavailable",
            f"the catalog database is {detail}; retry in {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)},
        )


def unavailable(exc: BaseException) -> DatabaseUnavailable | None:
    """The 503 for a connection-level database error (locked, refused, dropped, pool
    exhausted); None for anything else (a constraint or a bad statement is a bug)."""
    connection_level = isinstance(
        exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeoutError
    ) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)
    if not connection_level:
        return None
    # The driver's text names hosts and files: it goes to the log, never to the client.
    text = str(getattr(exc, "orig", None) or exc).lower()
    if "locked" in text or "busy" in text:
        return DatabaseUnavailable("locked by another writer", RETRY_AFTER_LOCKED_S)
    return DatabaseUnavailable("unavailable", RETRY_AFTER_UNREACHABLE_S)


class Database:
    """An engine and its session factory for one catalog URL."""

    def __init__(
        self, url: str, *, echo: bool = False, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S
    ) -> None:
        self.url = url
        self.engine = _make_engine(url, echo=echo, busy_timeout_s=busy_timeout_s)
        # Objects stay readable after commit: services return plain dicts built from them.
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._tables_ready = False
        self._tables_lock = threading.Lock()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any exception; a locked or
        unreachable database raises `DatabaseUnavailable` (chained to the driver's error)."""
        with _mapped_errors():
            self._ensure_tables()
            with self.sessions() as session, session.begin():
                yield session

    def migrate(self) -> None:
        """Apply the Alembic migrations the catalog lacks (all of them on an empty one)."""
        from app.migrations import upgrade  # env.py imports this module: import it late

        with _mapped_errors():
            upgrade(self.engine)
        self._tables_ready = True

    def _ensure_tables(self) -> None:
        if self._tables_ready:
            return
        with self._tables_lock:
            if not self._tables_ready:
                self.migrate()

    def dispose(self) -> None:
        """Close pooled connections (at shutdown, or between tests)."""
        self.engine.dispose()


def open_database(settings: Settings) -> Database:
    """The catalog of `settings`, migrated (at the first session if it is down now)."""
    database = Database(
        settings.resolved_database_url, busy_timeout_s=settings.database_busy_timeout_s
    )
    try:
        database.migrate()
    except DatabaseUnavailable as exc:
        # Inference needs no catalog: start anyway; catalog routes answer 503 until it is back.
        log.warning(
            "catalog database unavailable at start (%s); migrations run later", exc.__cause__
        )
    return database


@contextmanager
def _mapped_errors() -> Iterator[None]:
    try:
        yield
    except (DBAPIError, DisconnectionError, PoolTimeoutError) as exc:
        mapped = unavailable(exc)
        if mapped is None:
            raise
        log.warning(
            "catalog database unavailable: %s: %s",
            type(exc).__name__,
            exc.orig if isinstance(exc, DBAPIError) else exc,
        )
        raise mapped from exc


def _make_engine(url: str, *, echo: bool, busy_timeout_s: float) -> Engine:
    parsed = _with_installed_driver(make_url(url))
    if parsed.get_backend_name() != "sqlite":
        connect_args: dict[str, Any] = {}
        if parsed.get_driver_name() in ("psycopg", "psycopg2"):
            # A server that drops packets would otherwise hold each request for minutes.
            connect_args["connect_timeout"] = max(2, math.ceil(busy_timeout_s))
        return create_engine(parsed, echo=echo, pool_pre_ping=True, connect_args=connect_args)
    # Worker threads, request threads and the event stream all share the engine. A writer
    # waits this long for another's lock, then the request is a 503 rather than a hang.
    connect_args = {"check_same_thread": False, "timeout": busy_timeout_s}
    if parsed.database in (None, "", ":memory:"):
        # One shared connection, or every session would see its own empty database.
        engine = create_engine(url, echo=echo, connect_args=connect_args, poolclass=StaticPool)
    else:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args=connect_args)
    busy_ms = int(busy_timeout_s * 1000)
    event.listen(engine, "connect", lambda conn, _record: _sqlite_pragmas(conn, busy_ms))
    return engine


def _with_installed_driver(url: URL) -> URL:
    """`postgresql://` means psycopg2 to SQLAlchemy; use psycopg 3 when only it is installed."""
    if url.drivername != "postgresql" or importlib.util.find_spec("psycopg2") is not None:
        return url
    if importlib.util.find_spec("psycopg") is None:
        return url
    return url.set(drivername="postgresql+psycopg")


def _sqlite_pragmas(dbapi_connection: Any, busy_ms: int) -> None:
    # WAL lets the event stream read while a worker writes; NORMAL sync is safe under WAL;
    # foreign keys make deleting a job delete its events.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")  # first: WAL itself takes a lock
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()
