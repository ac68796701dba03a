"""Overload and limits on the tiny base: a full queue is a 429 with Retry-After, a slow engine a
504, oversized or over-split bodies a 4xx; never a 5xx, never a hang.

Requests go through httpx.AsyncClient over the ASGI app, with its lifespan run by the test,
so that many of them are truly concurrent in one event loop. The engine is slowed down by
wrapping `EncoderEngine.run` (the batcher's worker calls it on its own thread).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.base import FrozenBase
from app.config import Settings
from app.main import create_app
from app.registry.catalog import Registry
from app.registry.store import AdapterStore
from app.runtime.engine import EncoderEngine, EncodeRequest, EncodeResult
from tests.conftest import peft_adapter

LABELS = ["neg", "pos"]
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
BOUND_S = 60.0  # no scenario below may take longer than this: a hang fails, not blocks, the run
Scenario = Callable[[httpx.AsyncClient, FastAPI], Awaitable[None]]
Part = tuple[str, str | None, bytes]  # a multipart part: field, filename or None, bytes


class SlowEngine:
    """Patches `EncoderEngine.run` with a delay while `slow` is set (the batcher binds it at
    start)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay_s: float) -> None:
        self.slow = threading.Event()
        self.slow.set()
        original = EncoderEngine.run

        def run(engine: EncoderEngine, jobs: list[EncodeRequest]) -> list[EncodeResult]:
            if self.slow.is_set():
                time.sleep(delay_s)
            return original(engine, jobs)

        monkeypatch.setattr(EncoderEngine, "run", run)


@pytest.fixture(scope="module")
def adapter_files(
    tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, bytes]:
    return peft_adapter(tiny_bert_dir, r=4, out=tmp_path_factory.mktemp("overload") / "a")


@pytest.fixture
def run_app(
    tmp_path: Path, tiny_base: FrozenBase, adapter_files: dict[str, bytes]
) -> Iterator[Callable[..., None]]:
    """Run `scenario(client, app)` against a fresh app with an adapter `sst2`, within BOUND_S."""

    def run(scenario: Scenario, **overrides: Any) -> None:
        settings = Settings(
            store=tmp_path / "store",
            database_url=f"sqlite:///{tmp_path}/db.sqlite",
            max_wait_ms=1.0,
            _env_file=None,
            **overrides,
        )
        Registry(AdapterStore(settings.store), tiny_base, settings).register(
            "sst2",
            config_bytes=adapter_files[CONFIG],
            weights_bytes=adapter_files[WEIGHTS],
            task="classification",
            labels=LABELS,
        )
        app = create_app(settings, base=tiny_base)

        async def main() -> None:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://test", timeout=BOUND_S
                ) as client:
                    await asyncio.wait_for(scenario(client, app), BOUND_S)

        asyncio.run(main())

    yield run


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with the bytes of each file (None for folders)."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert set(error) >= {"code", "message", "param"}
    return error


def predict(
    client: httpx.AsyncClient, inputs: list[str] | None = None
) -> Awaitable[httpx.Response]:
    return client.post("/v1/adapters/sst2/predict", json={"inputs": inputs or ["a fine day"]})


# ---------------------------------------------------------------- the queue
def test_more_requests_than_the_queue_holds_get_200_or_429(
    run_app: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = SlowEngine(monkeypatch, delay_s=0.05)

    async def scenario(client: httpx.AsyncClient, app: FastAPI) -> None:
        started = time.monotonic()
        replies = await asyncio.gather(*(predict(client, [f"text {i}"]) for i in range(48)))
        statuses = [r.status_code for r in replies]
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(200) >= 4 and statuses.count(429) >= 1, statuses
        for reply in replies:
            if reply.status_code == 429:
                assert_error(reply, 429, "queue_full")
                assert int(reply.headers["retry-after"]) >= 1
            else:
                assert reply.json()["outputs"][0][0]["label"] in LABELS
        assert time.monotonic() - started < 30
        # the queue drained completely and the service answers again
        assert app.state.runtime.encoder_batcher.pending_rows == 0
        engine.slow.clear()
        assert (await predict(client)).status_code == 200
        assert (await client.get("/health/ready")).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'switchyard_rejected_total{reason="queue_full"}' in metrics

    run_app(scenario, queue_size=4, max_batch_size=2)


def test_a_request_larger_than_the_queue_is_413_not_429(run_app: Callable[..., None]) -> None:
    """Retrying cannot help a request that could never fit: no Retry-After loop."""

    async def scenario(client: httpx.AsyncClient, app: FastAPI) -> None:
        error = assert_error(await predict(client, ["x"] * 5), 413, "too_many_inputs")
        assert error["param"] == "inputs"
        assert (await predict(client, ["x"] * 4)).status_code == 200

    run_app(scenario, queue_size=4)


# ---------------------------------------------------------------- timeouts
def test_slow_engine_is_504_and_the_service_recovers(
    run_app: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine's 3 s against a 0.3 s timeout: room for a loaded box between the two.
    engine = SlowEngine(monkeypatch, delay_s=3.0)

    async def scenario(client: httpx.AsyncClient, app: FastAPI) -> None:
        started = time.monotonic()
        replies = await asyncio.gather(*(predict(client) for _ in range(3)))
        assert time.monotonic() - started < 2.0  # answered at the timeout, not after the engine
        for reply in replies:
            error = assert_error(reply, 504, "timeout")
            assert "request_timeout_s" in error["message"]
        engine.slow.clear()
        for _ in range(200):  # the batch that timed out finishes; its rows leave the queue
            if app.state.runtime.encoder_batcher.pending_rows == 0:
                break
            await asyncio.sleep(0.05)
        assert app.state.runtime.encoder_batcher.pending_rows == 0
        assert (await predict(client)).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'switchyard_requests_total{adapter="sst2",status="timeout"} 3.0' in metrics

    run_app(scenario, request_timeout_s=0.3)


# ---------------------------------------------------------------- bodies
def multipart(parts: list[Part], boundary: str = "b0undary") -> bytes:
    """A multipart/form-data body by hand: (field, filename or None, bytes) per part."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n"
        out += head.encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MULTIPART = {"content-type": "multipart/form-data; boundary=b0undary"}


def adapter_parts(files: dict[str, bytes], name: str = "fresh") -> list[Part]:
    return [
        ("name", None, name.encode()),
        ("labels", None, json.dumps(LABELS).encode()),
        (CONFIG, CONFIG, files[CONFIG]),
        (WEIGHTS, WEIGHTS, files[WEIGHTS]),
    ]


def test_multipart_parts_and_fields_are_limited(
    run_app: Callable[..., None], adapter_files: dict[str, bytes], tmp_path: Path
) -> None:
    async def scenario(client: httpx.AsyncClient, app: FastAPI) -> None:
        before = snapshot(tmp_path / "store")
        good = adapter_parts(adapter_files)
        extra_files: list[Part] = [*good, *((f"f{i}", f"f{i}.bin", b"x") for i in range(4))]
        extra_fields: list[Part] = [*good, *((f"k{i}", None, b"v") for i in range(8))]
        huge_field: list[Part] = [("name", None, b"x" * (1024 * 1024 + 1)), *good[1:]]
        for parts in (extra_files, extra_fields, huge_field):
            reply = await client.post("/v1/adapters", content=multipart(parts), headers=MULTIPART)
            assert 400 <= reply.status_code < 500, reply.text
            assert "error" in reply.json()
        # a dataset upload of many tiny parts is refused before it is parsed
        many: list[Part] = [
            ("file", "d.jsonl", b'{"text": "a", "label": "x"}\n'),
            *((f"k{i}", None, b"v") for i in range(40)),
        ]
        reply = await client.post("/v1/datasets", content=multipart(many), headers=MULTIPART)
        assert_error(reply, 413, "too_many_parts")
        assert snapshot(tmp_path / "store") == before
        assert (await client.get("/v1/datasets")).json()["data"] == []
        # the control: the same upload without the extras is stored
        reply = await client.post("/v1/adapters", content=multipart(good), headers=MULTIPART)
        assert reply.status_code == 201, reply.text
        # counted exactly, even with every delimiter split across 7-byte chunks
        for extra, status in ((15, 201), (16, 413)):
            body = multipart(many[: 1 + extra])
            pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
            reply = await client.post("/v1/datasets", content=aiter_of(pieces), headers=MULTIPART)
            assert reply.status_code == status, reply.text

    run_app(scenario, max_multipart_parts=16)


async def aiter_of(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def chunks(total: int, size: int = 16 * 1024, head: bytes = b"") -> AsyncIterator[bytes]:
    yield head
    sent = 0
    while sent < total:
        yield b"x" * size
        sent += size


def test_chunked_bodies_over_the_limits_are_413(
    run_app: Callable[..., None], tmp_path: Path
) -> None:
    async def scenario(client: httpx.AsyncClient, app: FastAPI) -> None:
        before = snapshot(tmp_path / "store")
        head = (
            b'--b0undary\r\nContent-Disposition: form-data; name="adapter_model.safetensors"; '
            b'filename="adapter_model.safetensors"\r\n\r\n'
        )
        upload = await client.post(
            "/v1/adapters", content=chunks(400 * 1024, head=head), headers=MULTIPART
        )
        assert "content-length" not in upload.request.headers  # really chunked
        assert_error(upload, 413, "payload_too_large")
        body = await client.post(
            "/v1/adapters/sst2/predict",
            content=chunks(64 * 1024),
            headers={"content-type": "application/json"},
        )
        assert_error(body, 413, "payload_too_large")
        declared = await client.post(
            "/v1/adapters/sst2/predict",
            content=b"x" * 10000,
            headers={"content-type": "application/json"},
        )
        assert_error(declared, 413, "payload_too_large")
        assert snapshot(tmp_path / "store") == before
        assert (await predict(client)).status_code == 200

    run_app(
        scenario, max_body_bytes=8192, max_upload_bytes=128 * 1024, max_dataset_bytes=128 * 1024
    )
