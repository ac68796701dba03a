"""A real service on the packaged MiniLM base, run as `switchyard serve`, spoken to over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.client import Client
from tests.conftest import MINILM_DIR

REPO = Path(__file__).resolve().parents[2]


@dataclass
class LiveServer:
    """A running service: its URL, its store folder and an HTTP client."""

    url: str
    store: Path
    http: httpx.Client
    process: subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    store: Path,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    output: Path | None = None,
) -> LiveServer:
    """Start `python -m app.cli serve` and wait for /health/ready; its stdout and stderr go
    to `output` (appended) when given."""
    port = free_port()
    environ = {
        **os.environ,
        "SWITCHYARD_STORE": str(store),
        "SWITCHYARD_PORT": str(port),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **(env or {}),
    }
    with open(output or os.devnull, "ab") as sink:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--log-level", "warning"],
            cwd=REPO,
            env=environ,
            stdout=sink if output else None,
            stderr=subprocess.STDOUT if output else None,
        )
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, timeout=120)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if http.get("/health/ready").status_code == 200:
                return LiveServer(url, store, http, process)
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("server did not become ready in time")


def stop_server(server: LiveServer) -> None:
    server.http.close()
    server.process.terminate()
    try:
        server.process.wait(60)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real-base service shared by the integration tests."""
    server = start_server(
        tmp_path_factory.mktemp("store"), env={"SWITCHYARD_MAX_UPLOAD_BYTES": str(8 * 1024 * 1024)}
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def api_client(live: LiveServer) -> Iterator[Client]:
    """`app.client.Client` on the shared real-base service."""
    with Client(live.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return MINILM_DIR


def read_rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """JSONL rows of a shared dataset file."""
    import json

    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines[:limit]]


def run_job(
    live: LiveServer, body: dict[str, object], *, timeout: float = 1200
) -> dict[str, object]:
    """Submit a training job and wait until it ends; returns the final job."""
    response = live.http.post("/v1/training-jobs", json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = live.http.get(f"/v1/training-jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")
