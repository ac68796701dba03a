"""The catalog database's faults survived: locked or unreachable is a 503 with Retry-After, in
the error shape, and the service recovers by itself once the database is back.

SQLite is locked by a second connection holding a write transaction; PostgreSQL (127.0.0.1:5432,
trust auth, database `test`) is reached through a TCP relay this test starts and stops, so the
server that other tests share is never touched. The PostgreSQL tests skip only when no server
answers there.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from app.base import FrozenBase
from app.config import Settings
from app.db import Database, DatabaseUnavailable, TrainingJob, unavailable
from app.main import create_app
from app.training.datasets import DatasetService
from app.training.jobs import JobManager
from tests.unit.training.test_jobs import EXAMPLES, FakeRegistry, FakeTrainer, finished, wait_for

PG_HOST, PG_PORT = "127.0.0.1", 5432
DATASET = b'{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n'
FAST_JOB = {"max_steps": 2, "head_init": "random", "epochs": 1}


def make_settings(tmp_path: Path, **kwargs: Any) -> Settings:
    return Settings(
        store=tmp_path / "store",
        max_wait_ms=1.0,
        database_busy_timeout_s=0.2,
        _env_file=None,
        **kwargs,
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """conftest's `client` builds the whole service from this: a short busy timeout."""
    return make_settings(tmp_path)


def assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "database_unavailable" and error["param"] is None
    assert int(response.headers["Retry-After"]) >= 1
    assert "/" not in error["message"]  # no path, no URL, no host


@contextlib.contextmanager
def sqlite_locked(path: Path) -> Iterator[None]:
    """Another process's writer: a second connection holding the write lock."""
    other = sqlite3.connect(path, isolation_level=None, timeout=5)
    other.execute("BEGIN EXCLUSIVE")
    other.execute("UPDATE training_jobs SET status = status")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


# ---------------------------------------------------------------- SQLite locked
def test_a_locked_sqlite_is_a_503_then_recovers(client: TestClient, settings: Settings) -> None:
    path = settings.store / "switchyard.db"
    body = {"adapter": "locked", "examples": EXAMPLES, "hyperparameters": FAST_JOB}
    with sqlite_locked(path):
        assert_unavailable(client.post("/v1/datasets", files={"file": ("d.jsonl", DATASET)}))
        assert_unavailable(client.post("/v1/training-jobs", json=body))
        time.sleep(0.3)  # the workers' claims hit the lock too, and must survive it
    assert list((settings.store / "_datasets").glob("*.jsonl")) == []  # nothing half-written
    assert client.get("/v1/datasets").json()["data"] == []
    assert client.get("/v1/training-jobs").json()["data"] == []
    assert client.post("/v1/datasets", files={"file": ("d.jsonl", DATASET)}).status_code == 201
    created = client.post("/v1/training-jobs", json=body)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    deadline = time.monotonic() + 120
    while client.get(f"/v1/training-jobs/{job_id}").json()["status"] not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert client.get(f"/v1/training-jobs/{job_id}").json()["status"] == "succeeded"


def test_reads_go_on_while_a_writer_holds_the_lock(client: TestClient, settings: Settings) -> None:
    """WAL: readers never wait for a writer, so listing and following jobs stay 200."""
    with sqlite_locked(settings.store / "switchyard.db"):
        assert client.get("/v1/training-jobs").status_code == 200
        assert client.get("/v1/datasets").status_code == 200


def test_the_busy_timeout_is_the_setting(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'c.db'}", busy_timeout_s=0.25)
    db.migrate()
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 250
    with sqlite_locked(tmp_path / "c.db"):
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as caught, db.session() as session:
            session.add(
                TrainingJob(
                    id="j", adapter="a", task="t", method="lora", status="queued", request={}
                )
            )
        assert 0.2 < time.monotonic() - started < 5
    assert isinstance(caught.value.__cause__, OperationalError)  # the cause is chained
    assert caught.value.headers == {"Retry-After": "1"}
    db.dispose()


def test_only_connection_level_errors_are_a_503() -> None:
    locked = OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked"))
    assert unavailable(locked) is not None
    assert unavailable(IntegrityError("INSERT", {}, Exception("UNIQUE failed"))) is None
    assert unavailable(ValueError("x")) is None


# ---------------------------------------------------------------- PostgreSQL
def pg_reachable() -> bool:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False
    with contextlib.suppress(OSError), socket.create_connection((PG_HOST, PG_PORT), timeout=1):
        return True
    return False


needs_pg = pytest.mark.skipif(not pg_reachable(), reason="no PostgreSQL on 127.0.0.1:5432")


class Relay:
    """A TCP relay to the PostgreSQL server that can be switched off (the server unreachable)
    and on again, without touching the server itself."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.listener.close()  # off until started: connections are refused
        self._open: list[socket.socket] = []
        self._stop = threading.Event()

    def start(self) -> None:
        self._stop.clear()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.listener.close()
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._open.clear()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            server = socket.create_connection((PG_HOST, PG_PORT))
            self._open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A schema of its own in database `test`, so that runs never see each other's rows."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        f"host={PG_HOST} port={PG_PORT} user=postgres dbname=test", autocommit=True
    ) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
        yield name
        conn.execute(f"DROP SCHEMA {name} CASCADE")


def pg_url(schema: str, port: int = PG_PORT) -> str:
    return f"postgresql://postgres@{PG_HOST}:{port}/test?options=-csearch_path%3D{schema}"


def manager_on(db: Database, cfg: Settings) -> JobManager:
    return JobManager(
        db,
        DatasetService(db, cfg),
        cfg,
        train_fn=FakeTrainer(),
        register_fn=FakeRegistry().register,
        poll_interval_s=0.02,
        progress_interval_s=0.0,
    )


@needs_pg
def test_the_job_lifecycle_runs_on_postgresql(tmp_path: Path, pg_schema: str) -> None:
    cfg = make_settings(tmp_path, database_url=pg_url(pg_schema))
    db = Database(cfg.resolved_database_url)
    db.migrate()
    assert db.engine.dialect.name == "postgresql"
    manager = manager_on(db, cfg)
    manager.start()
    try:
        dataset = manager.datasets.create("d.jsonl", DATASET * 3)
        job = manager.create({"adapter": "pg", "training_data": dataset["id"]})
        wait_for(finished(manager, job["id"]))
        done = manager.get(job["id"])
        assert done["status"] == "succeeded" and done["result"] == {"adapter": "pg", "version": 1}
        kinds = [e["kind"] for e in manager.events(job["id"])]
        assert kinds[0] == "status" and "loss" in kinds and "evaluation" in kinds
        assert [j["id"] for j in manager.list(status="succeeded")] == [job["id"]]
        # A crash leaves a job running: the next start marks it interrupted.
        with db.session() as session:
            session.add(
                TrainingJob(
                    id="job_left",
                    adapter="pg",
                    task="classification",
                    method="lora",
                    status="running",
                    request={},
                )
            )
    finally:
        manager.shutdown(timeout=2)
    restarted = manager_on(db, cfg)
    restarted.start()
    restarted.shutdown(timeout=2)
    assert restarted.get("job_left")["error"]["code"] == "interrupted"
    db.dispose()


@needs_pg
def test_an_unreachable_postgresql_is_a_503_then_recovers(
    tmp_path: Path, pg_schema: str, tiny_base: FrozenBase
) -> None:
    relay = Relay()  # off: the server is unreachable, even at start
    app = create_app(
        make_settings(tmp_path, database_url=pg_url(pg_schema, relay.port)), base=tiny_base
    )
    with TestClient(app) as client:
        for url in ("/v1/training-jobs", "/v1/datasets"):
            assert_unavailable(client.get(url))
        assert client.get("/v1/adapters").status_code == 200  # the rest of the service runs
        relay.start()
        try:
            eventually(lambda: client.get("/v1/training-jobs").status_code == 200)
            assert (
                client.post("/v1/datasets", files={"file": ("d.jsonl", DATASET)}).status_code == 201
            )
            relay.stop()  # and again while running: pooled connections die
            assert_unavailable(client.get("/v1/datasets"))
            relay.start()
            eventually(lambda: client.get("/v1/datasets").status_code == 200)
            assert len(client.get("/v1/datasets").json()["data"]) == 1
        finally:
            relay.stop()


def eventually(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not recovered in time"
        time.sleep(0.2)
