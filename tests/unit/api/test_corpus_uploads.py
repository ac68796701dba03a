"""Unlabeled text over HTTP: `POST /v1/datasets` and `/v1/files` take plain text with a
`split`, the dataset routes have their own body limit (the adapter route keeps its own), and
a corpus over `max_corpus_bytes` is a 413 at submit time that stores nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.base import FrozenBase
from app.config import Settings
from app.main import create_app

KiB = 1024
CORPUS_LIMIT = 256 * KiB


@pytest.fixture
def client(tmp_path: Path, tiny_base: FrozenBase) -> Iterator[TestClient]:
    cfg = Settings(
        store=tmp_path / "store",
        max_body_bytes=8 * KiB,
        max_upload_bytes=64 * KiB,
        max_dataset_bytes=32 * KiB,
        max_corpus_bytes=CORPUS_LIMIT,
        max_corpus_document_bytes=4 * KiB,
        _env_file=None,
    )
    with TestClient(create_app(cfg, base=tiny_base)) as test_client:
        yield test_client


def nothing_stored(client: TestClient, tmp_path: Path) -> bool:
    listed = client.get("/v1/datasets")
    assert listed.status_code == 200, listed.text
    return listed.json()["data"] == [] and list((tmp_path / "store" / "_datasets").iterdir()) == []


def post(client: TestClient, data: bytes, filename: str = "c.txt", **form: Any) -> Any:
    return client.post("/v1/datasets", files={"file": (filename, data)}, data=form)


def corpus(size: int) -> bytes:
    line = b"some words of an unlabeled corpus\n"
    return (line * (size // len(line) + 1))[:size]


def test_plain_text_uploads_with_a_split(client: TestClient) -> None:
    created = post(client, b"a one\na two\n\nb one\n", split="line")
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["task"], body["format"], body["rows"], body["columns"]) == (
        "language_modeling",
        "text",
        3,
        ["text"],
    )
    by_paragraph = post(client, b"a one\na two\n\nb one\n", split="paragraph").json()
    assert by_paragraph["rows"] == 2


def test_a_corpus_bigger_than_a_labeled_set_may_be_uploads(client: TestClient) -> None:
    data = corpus(200 * KiB)  # over max_dataset_bytes
    created = post(client, data)
    assert created.status_code == 201, created.text
    assert created.json()["bytes"] == len(data)
    assert created.json()["rows"] == data.count(b"\n") + (not data.endswith(b"\n"))


def test_the_openai_files_route_takes_the_same_text(client: TestClient) -> None:
    data = b"first\n\nsecond\nthird\n"
    made = client.post(
        "/v1/files", files={"file": ("c.txt", data)}, data={"purpose": "fine-tune", "split": "line"}
    )
    assert made.status_code == 200, made.text
    assert made.json()["status_details"] == "3 rows, task language_modeling"


@pytest.mark.parametrize("route", ["/v1/datasets", "/v1/files"])
def test_an_unknown_split_is_refused(client: TestClient, route: str, tmp_path: Path) -> None:
    form = {"split": "sentence", "purpose": "fine-tune"}
    refused = client.post(route, files={"file": ("c.txt", b"a\n")}, data=form)
    assert 400 <= refused.status_code < 500 and "split" in refused.text
    assert nothing_stored(client, tmp_path)


def test_a_corpus_just_over_max_corpus_bytes_is_413_and_stores_nothing(
    client: TestClient, tmp_path: Path
) -> None:
    # Within the multipart allowance of the body limit: the service's check answers.
    data = corpus(CORPUS_LIMIT + 10)
    refused = post(client, data)
    assert refused.status_code == 413
    error = refused.json()["error"]
    assert error["code"] == "payload_too_large" and error["param"] == "file"
    assert error["message"] == f"text-only dataset is {len(data)} bytes > max_corpus_bytes 262144"
    assert nothing_stored(client, tmp_path)


def test_a_body_far_over_the_dataset_limit_is_413_before_it_is_read(
    client: TestClient, tmp_path: Path
) -> None:
    data = corpus(CORPUS_LIMIT + 100 * KiB)
    refused = post(client, data)
    assert refused.status_code == 413
    error = refused.json()["error"]
    assert error["code"] == "payload_too_large"
    limit = CORPUS_LIMIT + 64 * KiB
    assert error["message"].startswith("request body is at least ")
    assert error["message"].endswith(f"bytes > limit {limit}")
    assert nothing_stored(client, tmp_path)


def test_a_labeled_file_keeps_max_dataset_bytes(client: TestClient, tmp_path: Path) -> None:
    row = b'{"text": "%s", "label": "x"}\n' % (b"w" * 100)
    data = row * (33 * KiB // len(row))
    refused = post(client, data, filename="l.jsonl")
    assert refused.status_code == 413
    assert refused.json()["error"]["message"] == (
        f"dataset is {len(data)} bytes > max_dataset_bytes 32768"
    )
    assert nothing_stored(client, tmp_path)


def test_the_adapter_route_keeps_the_upload_limit(client: TestClient) -> None:
    # Bigger than max_upload_bytes (+ its allowance), smaller than the dataset routes' limit.
    weights = b"\0" * (200 * KiB)
    refused = client.post(
        "/v1/adapters",
        files={"adapter_model.safetensors": ("adapter_model.safetensors", weights)},
        data={"name": "big"},
    )
    assert refused.status_code == 413
    assert refused.json()["error"]["message"].endswith(f"> limit {128 * KiB}")


def test_a_document_limit_over_the_corpus_limit_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="max_corpus_document_bytes 4096 > max_corpus"):
        Settings(
            store=tmp_path,
            max_corpus_bytes=2048,
            max_corpus_document_bytes=4096,
            _env_file=None,
        )
