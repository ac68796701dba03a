"""The dataset and training-job routes over HTTP, on a small app with a fake trainer."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from app.api.routes import datasets as dataset_routes
from app.api.routes import training_jobs as job_routes
from app.config import Settings
from app.db import open_database
from app.errors import SwitchyardError
from app.registry.store import CONFIG_FILE, WEIGHTS_FILE
from app.training.datasets import DatasetService
from app.training.jobs import JobManager
from app.training.types import (
    CancelToken,
    TrainingCancelled,
    TrainingOutcome,
    TrainingPlan,
    TrainingReporter,
)

ROWS = [{"text": f"good {i}", "label": "pos"} for i in range(5)] + [
    {"text": f"bad {i}", "label": "neg"} for i in range(5)
]


class Trainer:
    """Three steps with a loss event each; waits for `gate` before finishing when it is set."""

    def __init__(self) -> None:
        self.gate: threading.Event | None = None

    def __call__(
        self, plan: TrainingPlan, *, reporter: TrainingReporter, cancel: CancelToken
    ) -> TrainingOutcome:
        for step in range(1, 4):
            time.sleep(0.01)
            reporter.progress(step=step, total_steps=3, epoch=step / 3)
            reporter.event("loss", {"step": step, "loss": float("nan") if step == 2 else 0.5})
        while self.gate is not None and not self.gate.is_set():
            if cancel.cancelled:
                raise TrainingCancelled(cancel.reason)
            time.sleep(0.01)
        reporter.event("evaluation", {"step": 3, "accuracy": 1.0})
        return TrainingOutcome(
            files={CONFIG_FILE: b"{}", WEIGHTS_FILE: b"w"},
            metrics={"accuracy": 1.0},
            history=[{"step": 3, "accuracy": 1.0}],
            best={"step": 3, "epoch": 1.0, "metric": "accuracy", "value": 1.0},
            hyperparameters={},
        )


@pytest.fixture
def trainer() -> Trainer:
    return Trainer()


@pytest.fixture
def client(tmp_path: Path, trainer: Trainer) -> Iterator[TestClient]:
    cfg = Settings(store=tmp_path / "store", max_dataset_bytes=2048, _env_file=None)
    db = open_database(cfg)
    app = FastAPI()

    @app.exception_handler(SwitchyardError)
    async def _render(_request: Request, exc: SwitchyardError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status)

    app.include_router(dataset_routes.router)
    app.include_router(job_routes.router)
    app.state.datasets = DatasetService(db, cfg)
    app.state.jobs = JobManager(
        db,
        app.state.datasets,
        cfg,
        train_fn=trainer,
        register_fn=lambda name, **_: 7,
        poll_interval_s=0.02,
        progress_interval_s=0.0,
    )
    app.state.jobs.start()
    with TestClient(app) as test_client:
        yield test_client
    app.state.jobs.shutdown(timeout=2)
    db.dispose()


def upload(client: TestClient, content: bytes, filename: str = "d.jsonl", **form: str) -> Any:
    return client.post("/v1/datasets", files={"file": (filename, content)}, data=form)


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def read_sse(client: TestClient, url: str) -> list[dict[str, Any]]:
    events = []
    with client.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        block: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "":
                if "data" in block:
                    events.append(
                        {
                            "id": int(block["id"]),
                            "event": block["event"],
                            **json.loads(block["data"]),
                        }
                    )
                block = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                block[key] = value
    return events


def test_dataset_routes(client: TestClient) -> None:
    created = upload(client, jsonl(ROWS), name="reviews")
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == "reviews" and body["task"] == "classification"
    assert body["label_counts"] == {"neg": 5, "pos": 5} and body["rows"] == 10
    assert created.headers["location"] == f"/v1/datasets/{body['id']}"
    assert client.get("/v1/datasets").json() == {"data": [body]}
    assert client.get(f"/v1/datasets/{body['id']}").json() == body
    assert client.delete(f"/v1/datasets/{body['id']}").json()["deleted"] is True
    missing = client.get(f"/v1/datasets/{body['id']}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "dataset_not_found"


def test_dataset_errors_list_bad_rows_and_limits(client: TestClient) -> None:
    bad = upload(client, b"text,label\nok,a\n,b\nok,c\n", filename="d.csv")
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["code"] == "invalid_dataset" and error["param"] == "file"
    assert error["details"] == [
        {
            "line": 3,
            "message": "text must be a non-empty string, got nothing "
            "(the row has columns ['label'])",
        }
    ]
    big = upload(client, b"x" * 5000)
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
    assert client.post("/v1/datasets", data={"name": "x"}).status_code == 422


def test_submit_and_follow_a_job_over_sse(client: TestClient) -> None:
    dataset = upload(client, jsonl(ROWS)).json()
    submitted = client.post(
        "/v1/training-jobs",
        json={"adapter": "sst2", "training_data": dataset["id"], "hyperparameters": {"epochs": 1}},
    )
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert job["status"] == "queued" and job["training_data"] == dataset["id"]
    assert submitted.headers["location"] == f"/v1/training-jobs/{job['id']}"

    events = read_sse(client, f"/v1/training-jobs/{job['id']}/events?stream=true")
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses == ["queued", "validating", "running", "succeeded"]
    losses = [e["data"]["loss"] for e in events if e["event"] == "loss"]
    assert losses == [0.5, None, 0.5]  # NaN travels as null, never as invalid JSON
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)

    done = client.get(f"/v1/training-jobs/{job['id']}").json()
    assert done["status"] == "succeeded" and done["result"] == {"adapter": "sst2", "version": 7}
    assert done["progress"]["percent"] == 100.0
    assert client.get("/v1/training-jobs").json()["data"][0]["id"] == job["id"]

    logged = client.get(f"/v1/training-jobs/{job['id']}/events").json()
    assert [e["id"] for e in logged["data"]] == [e["id"] for e in events]
    resumed = read_sse(
        client, f"/v1/training-jobs/{job['id']}/events?stream=true&after={events[3]['id']}"
    )
    assert [e["id"] for e in resumed] == [e["id"] for e in events[4:]]


def test_cancel_over_http_and_stream_ends(client: TestClient, trainer: Trainer) -> None:
    trainer.gate = threading.Event()
    job = client.post("/v1/training-jobs", json={"adapter": "x", "examples": ROWS}).json()
    deadline = time.monotonic() + 5
    while client.get(f"/v1/training-jobs/{job['id']}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    cancelled = client.post(f"/v1/training-jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    events = read_sse(client, f"/v1/training-jobs/{job['id']}/events?stream=true")
    assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "cancelled"
    again = client.post(f"/v1/training-jobs/{job['id']}/cancel")
    assert again.json()["status"] == "cancelled"


def test_job_errors(client: TestClient) -> None:
    neither = client.post("/v1/training-jobs", json={"adapter": "x"})
    assert neither.status_code == 400 and neither.json()["error"]["param"] == "training_data"
    assert (
        client.post(
            "/v1/training-jobs", json={"adapter": "x", "examples": ROWS, "epochs": 3}
        ).status_code
        == 422
    )
    bad_rows = client.post("/v1/training-jobs", json={"adapter": "x", "examples": [{"text": "a"}]})
    assert bad_rows.status_code == 400 and bad_rows.json()["error"]["details"][0]["line"] == 1
    for url in (
        "/v1/training-jobs/job_nope",
        "/v1/training-jobs/job_nope/events",
        "/v1/training-jobs/job_nope/events?stream=true",
    ):
        missing = client.get(url)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"
    assert client.post("/v1/training-jobs/job_nope/cancel").status_code == 404
