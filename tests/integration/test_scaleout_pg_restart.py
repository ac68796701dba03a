"""A real restart of the local PostgreSQL server under a running Switchyard on it: catalog and
job requests are a clean 503 `database_unavailable` with Retry-After while the server is down,
and succeed again once it is back, with no restart of Switchyard.

The server is shared with other tests and CI, so it is started again in a `finally`, whatever
happened. Restarting it takes the cluster's tools and root (`pg_ctlcluster`); without them the
test skips, except in CI (`CI` set), where it fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.base import FrozenBase
from app.config import Settings
from app.main import create_app
from tests.unit.scaleout.pgtools import PG_HOST, PG_PORT, needs_pg, pg_reachable, pg_url

CLUSTER = ("15", "main")  # pg_lsclusters: the server on 127.0.0.1:5432
DATASET = b'{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n' * 4
FAST_JOB = {"max_steps": 2, "head_init": "random", "epochs": 1}

can_restart = shutil.which("pg_ctlcluster") is not None and os.geteuid() == 0
pytestmark = [
    pytest.mark.slow,
    needs_pg,
    pytest.mark.skipif(
        not can_restart and not os.environ.get("CI"),
        reason="restarting PostgreSQL needs pg_ctlcluster and root (CI fails instead)",
    ),
]


def _pg_ctl(action: str) -> None:
    subprocess.run(["pg_ctlcluster", *CLUSTER, action], check=True, timeout=60)


@contextlib.contextmanager
def _schema() -> Iterator[str]:
    """A fresh schema, dropped on a new connection afterwards (`fresh_schema` keeps one open
    across the test, which the restart would kill)."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=test"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


def _eventually(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not recovered within {timeout} s"
        time.sleep(0.2)


def _assert_unavailable(response: Any) -> None:  # TestClient's and httpx's Response alike
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "database_unavailable"
    assert int(response.headers["Retry-After"]) >= 1


def _answers(client: TestClient) -> bool:
    return all(client.get(url).status_code == 200 for url in ("/v1/datasets", "/v1/training-jobs"))


def _job_finishes(client: TestClient, dataset: str) -> None:
    body = {"adapter": "after", "training_data": dataset, "hyperparameters": FAST_JOB}
    created = client.post("/v1/training-jobs", json=body)
    assert created.status_code == 202, created.text
    url = f"/v1/training-jobs/{created.json()['id']}"
    _eventually(lambda: client.get(url).json()["status"] in ("succeeded", "failed"), 60)
    assert client.get(url).json()["status"] == "succeeded", client.get(url).json()


def test_a_postgresql_restart_is_503_then_recovers(tmp_path: Path, tiny_base: FrozenBase) -> None:
    with _schema() as schema:
        settings = Settings(
            store=tmp_path / "store", database_url=pg_url(schema), max_wait_ms=1.0, _env_file=None
        )
        with TestClient(create_app(settings, base=tiny_base)) as client:
            first = client.post("/v1/datasets", files={"file": ("d.jsonl", DATASET)})
            assert first.status_code == 201, first.text
            try:
                _pg_ctl("stop")
                for url in ("/v1/datasets", "/v1/training-jobs"):
                    _assert_unavailable(client.get(url))
                _assert_unavailable(client.post("/v1/datasets", files={"file": ("d", DATASET)}))
                assert client.get("/v1/adapters").status_code == 200  # the rest still serves
                _pg_ctl("start")
                _eventually(lambda: _answers(client))
                _pg_ctl("restart")  # in one step: every pooled connection dies under it
                _eventually(lambda: _answers(client))
            finally:
                if not pg_reachable():
                    _pg_ctl("start")
            assert [d["id"] for d in client.get("/v1/datasets").json()["data"]] == [
                first.json()["id"]
            ]
            _job_finishes(client, first.json()["id"])
