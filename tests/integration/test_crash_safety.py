"""Crash safety and failure isolation of the real service (`switchyard serve` on MiniLM).

One SIGKILL lands while a training job runs, a large upload is still streaming in, and a
second large upload is being written into the store (the kill fires the moment its `.tmp-*`
folder appears). The restart on the same store must find only whole versions, remove and log
every leftover, fail the job as `interrupted`, register nothing half-made, and serve. Then
files are broken on disk under the running service: only the broken adapters fail, each with
a clear error code, and readiness stays 200. Two server starts; about a minute and a half.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from safetensors import safe_open

from app.registry.store import NAME_PATTERN
from tests.conftest import peft_adapter
from tests.integration.conftest import LiveServer, start_server

pytestmark = pytest.mark.slow

CONFIG, WEIGHTS, META = "adapter_config.json", "adapter_model.safetensors", "switchyard.json"
LABELS = ["neg", "pos"]
GOOD = ("good-a", "good-b", "good-c")
EXAMPLES = [
    {"text": text, "label": label}
    for text, label in [
        ("a wonderful, moving film", "pos"),
        ("dull and far too long", "neg"),
        ("I loved every minute", "pos"),
        ("a waste of an evening", "neg"),
        ("sharp, funny and warm", "pos"),
        ("the plot makes no sense", "neg"),
        ("beautifully shot and acted", "pos"),
        ("boring from start to end", "neg"),
        ("a delight for the whole family", "pos"),
        ("clumsy and loud", "neg"),
        ("the best film this year", "pos"),
        ("I walked out halfway", "neg"),
        ("smart and surprising", "pos"),
        ("flat characters, no story", "neg"),
        ("pure joy", "pos"),
        ("painfully bad", "neg"),
    ]
]
# Long enough to be killed while running: many tiny steps, no early stop.
SLOW_TRAINING = {
    "epochs": 100,
    "batch_size": 2,
    "max_length": 16,
    "head_init": "random",
    "early_stopping_patience": None,
}
MULTIPART = {"content-type": "multipart/form-data; boundary=crashboundary"}


@pytest.fixture(scope="module")
def adapter_files(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small LoRA and a large one (rank 64 on every linear layer, about 10 MB)."""
    work = tmp_path_factory.mktemp("crash-adapters")
    return {
        "small": peft_adapter(minilm_dir, r=4, out=work / "small"),
        "large": peft_adapter(minilm_dir, r=64, seed=1, out=work / "large"),
    }


@pytest.fixture
def servers() -> Iterator[list[LiveServer]]:
    """Servers started by a test; any still running at the end are killed."""
    started: list[LiveServer] = []
    yield started
    for server in started:
        server.http.close()
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(30)


def upload(http: httpx.Client, name: str, files: dict[str, bytes]) -> httpx.Response:
    return http.post(
        "/v1/adapters",
        data={"name": name, "labels": json.dumps(LABELS)},
        files={k: (k, v) for k, v in files.items() if k in (CONFIG, WEIGHTS)},
    )


def predict(http: httpx.Client, name: str) -> httpx.Response:
    return http.post(f"/v1/adapters/{name}/predict", json={"inputs": ["a fine film"]})


def wait_for_status(http: httpx.Client, job_id: str, status: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/v1/training-jobs/{job_id}").json()
        if job["status"] == status:
            return job
        assert job["status"] in ("queued", "validating", "running"), job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {status}: {job}")


def stream_slowly(url: str, streaming: threading.Event) -> None:
    """A 32 MB upload sent in 64 KB pieces, 20 ms apart: still streaming when the kill comes."""

    def body() -> Iterator[bytes]:
        yield (
            b'--crashboundary\r\nContent-Disposition: form-data; name="name"\r\n\r\nslow\r\n'
            b"--crashboundary\r\nContent-Disposition: form-data; "
            b'name="adapter_model.safetensors"; filename="adapter_model.safetensors"\r\n\r\n'
        )
        for index in range(512):
            yield b"\x00" * 65536
            if index == 8:
                streaming.set()
            time.sleep(0.02)

    with contextlib.suppress(httpx.HTTPError):  # the server dies under it, as planned
        httpx.post(f"{url}/v1/adapters", content=body(), headers=MULTIPART, timeout=60)


def upload_in_background(url: str, files: dict[str, bytes], result: list[int]) -> None:
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            result.append(upload(http, "big", files).status_code)
    except httpx.HTTPError:
        result.append(0)


def kill_when_writing(server: LiveServer, done: list[int], timeout: float = 60) -> None:
    """SIGKILL the moment the upload's temporary version folder exists (or when it is over)."""
    folder = server.store / "big"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done:
        if folder.is_dir() and any(p.name.startswith(".tmp-") for p in folder.iterdir()):
            break
        time.sleep(0.0005)
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(30)
    server.http.close()


def leftovers(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob("*") if p.name.startswith((".tmp-", ".trash-")))


def check_whole_versions(store: Path) -> dict[str, list[int]]:
    """Every version folder holds exactly the three files, and they parse; returns versions."""
    found: dict[str, list[int]] = {}
    for folder in sorted(store.iterdir()):
        if not (folder.is_dir() and NAME_PATTERN.fullmatch(folder.name)):
            continue
        for version in sorted(folder.iterdir()):
            if version.name == "pinned":
                continue
            assert version.name.isdigit(), version
            assert sorted(p.name for p in version.iterdir()) == sorted([CONFIG, META, WEIGHTS])
            meta = json.loads((version / META).read_text())
            assert (meta["name"], meta["version"]) == (folder.name, int(version.name))
            json.loads((version / CONFIG).read_text())
            with safe_open(str(version / WEIGHTS), framework="pt") as weights:
                assert list(weights.keys())
            found.setdefault(folder.name, []).append(int(version.name))
    return found


def test_kill_during_uploads_and_training_then_restart(
    tmp_path: Path, adapter_files: dict[str, Any], servers: list[LiveServer]
) -> None:
    store = tmp_path / "store"
    server = start_server(store)
    servers.append(server)
    for name in GOOD:
        assert upload(server.http, name, adapter_files["small"]).status_code == 201
    job = server.http.post(
        "/v1/training-jobs",
        json={
            "adapter": "trained",
            "task": "classification",
            "method": "lora",
            "examples": EXAMPLES,
            "hyperparameters": SLOW_TRAINING,
        },
    )
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    wait_for_status(server.http, job_id, "running", timeout=120)

    streaming = threading.Event()
    slow = threading.Thread(target=stream_slowly, args=(server.url, streaming), daemon=True)
    slow.start()
    assert streaming.wait(30)
    done: list[int] = []
    burst = threading.Thread(
        target=upload_in_background, args=(server.url, adapter_files["large"], done), daemon=True
    )
    burst.start()
    kill_when_writing(server, done)
    slow.join(30)
    burst.join(30)
    natural = leftovers(store)
    # A temporary folder still there means its rename never happened (the kill beat it).
    mid_write = any(p.parent.name == "big" for p in natural)
    print(f"kill landed mid-write: {mid_write}; big upload answered: {done}")

    # What a kill leaves, made certain: a half-written version and a half-written dataset file.
    planted = [
        store / "good-a" / f".tmp-{uuid.uuid4().hex}",
        store / "_datasets" / f".tmp-{uuid.uuid4().hex}-ds_gone.jsonl",
    ]
    planted[0].mkdir()
    (planted[0] / WEIGHTS).write_bytes(adapter_files["small"][WEIGHTS][:100])
    planted[1].parent.mkdir(exist_ok=True)
    planted[1].write_text('{"text": "half a ro')

    log = tmp_path / "restart.log"
    server = start_server(store, output=log)
    servers.append(server)
    text = log.read_text()
    for path in natural + planted:
        assert f"removed leftover of an interrupted write: {path.resolve()}" in text, path
    assert leftovers(store) == []
    versions = check_whole_versions(store)
    assert {name: versions[name] for name in GOOD} == {name: [1] for name in GOOD}
    assert set(versions) <= {*GOOD, "big"}, versions  # nothing of "trained" or "slow"
    if mid_write:
        assert "big" not in versions
    data = server.http.get("/v1/adapters").json()["data"]
    listed = {a["name"]: a["latest_version"] for a in data}
    assert listed == {name: v[-1] for name, v in versions.items()}

    job_after = server.http.get(f"/v1/training-jobs/{job_id}").json()
    assert job_after["status"] == "failed", job_after
    assert job_after["error"]["code"] == "interrupted"
    assert f"training job {job_id} was interrupted by a restart" in text
    for name in ("trained", "slow"):
        assert server.http.get(f"/v1/adapters/{name}").status_code == 404
    assert server.http.get("/health/ready").status_code == 200
    for name in ("good-a", *(["big"] if "big" in versions else [])):
        assert predict(server.http, name).status_code == 200, name

    check_failure_isolation(server, adapter_files["small"])


def check_failure_isolation(server: LiveServer, files: dict[str, bytes]) -> None:
    """Break good-b's weights and good-c's files on disk (neither loaded yet in this process)."""
    weights = server.store / "good-b" / "1" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for path in (server.store / "good-c" / "1").iterdir():
        path.unlink()

    broken = predict(server.http, "good-b")
    assert broken.status_code == 503, broken.text
    assert broken.json()["error"]["code"] == "adapter_corrupted"
    assert "good-b" in broken.json()["error"]["message"]
    gone = predict(server.http, "good-c")
    assert gone.status_code in (404, 503), gone.text
    assert gone.json()["error"]["code"] in ("adapter_corrupted", "adapter_not_found")
    for _ in range(3):  # the others keep serving, before and after the failures
        assert predict(server.http, "good-a").status_code == 200
        assert server.http.get("/health/ready").status_code == 200
    names = {a["name"] for a in server.http.get("/v1/adapters").json()["data"]}
    assert "good-a" in names and "good-c" not in names
    assert server.http.get("/metrics").status_code == 200
    # a fresh version of the broken adapter serves again
    assert upload(server.http, "good-b", files).json()["version"] == 2
    assert predict(server.http, "good-b").json()["version"] == 2
