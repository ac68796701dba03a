"""What a Ray runtime replica does with a forwarded request, without Ray: routing keys, the
whole app answering in-process with the replica named, and multiplexed slots counted as
users of our cache (released once, however often Ray and the garbage collector call)."""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path

import httpx
import pytest

from app.base import FrozenBase
from app.config import Settings
from app.main import create_app
from app.scaleout.forwarding import (
    REPLICA_HEADER,
    ForwardedRequest,
    InProcessApp,
    replica_unavailable,
    routing_key,
)
from tests.conftest import peft_adapter


@pytest.mark.parametrize(
    ("path", "body", "key"),
    [
        ("/v1/adapters/sst2/predict", b"", "sst2"),
        ("/v1/adapters/sst2", b"", "sst2"),
        ("/v1/adapters/_base/predict", b"{}", None),
        ("/v1/adapters", b"", None),
        ("/v1/predict", b'{"adapters": ["b", "a"], "inputs": ["x"]}', "b"),
        ("/v1/embeddings", b'{"adapter": "e", "input": "x"}', "e"),
        ("/v1/chat/completions", b'{"model": "chat", "messages": []}', "chat"),
        ("/v1/predict", b"not json", None),
        ("/v1/predict", b"[1, 2]", None),
        ("/v1/training-jobs", b'{"adapter": "t"}', None),
    ],
)
def test_requests_are_keyed_by_the_adapter_they_name(path: str, body: bytes, key: str) -> None:
    assert routing_key(path, body) == key


def test_a_lost_replica_is_a_503_with_retry_after() -> None:
    response = replica_unavailable(RuntimeError("actor died"))
    assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
    assert json.loads(bytes(response.body))["error"]["code"] == "replica_unavailable"


def _forwarded(request: httpx.Request) -> ForwardedRequest:
    return ForwardedRequest(
        method=request.method,
        path=request.url.path,
        query=request.url.query.decode(),
        headers=tuple(request.headers.multi_items()),
        body=request.read(),
    )


def test_a_replica_answers_forwarded_requests_and_counts_its_slots(
    settings: Settings, tiny_base: FrozenBase, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    files = peft_adapter(tiny_bert_dir, out=tmp_path / "peft")
    upload = httpx.Request(
        "POST",
        "http://ingress/v1/adapters",
        data={"name": "sst2", "task": "classification", "labels": json.dumps(["a", "b"])},
        files={k: (k, v) for k, v in files.items() if k != "README.md"},
    )
    predict = httpx.Request(
        "POST", "http://ingress/v1/adapters/sst2/predict", json={"inputs": ["good film"]}
    )

    async def scenario() -> None:
        inner = InProcessApp(create_app(settings, base=tiny_base))
        await inner.start()
        try:
            stored = await inner.answer(_forwarded(upload), "replica-a")
            assert stored.status == 201 and (REPLICA_HEADER, "replica-a") in stored.headers
            slot = await inner.slot("sst2")
            assert slot.resident is not None and slot.resident.refs == 1
            answered = await inner.answer(_forwarded(predict), "replica-a")
            assert answered.status == 200, answered.body
            assert json.loads(answered.body)["outputs"][0][0]["label"] in ("a", "b")
            assert slot.resident.refs == 1  # the request's own use came and went
            resident = slot.resident
            slot.__del__()  # Ray's eviction
            assert resident.refs == 0
            del slot
            gc.collect()  # and the collector's, later: no second release
            assert resident.refs == 0
            missing = await inner.slot("nope")
            assert missing.resident is None
            missing.release()
        finally:
            await inner.stop()

    asyncio.run(scenario())
