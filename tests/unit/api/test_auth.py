"""Auth: keys with scopes and adapter limits; hashed keys; loopback-only without keys."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.base import FrozenBase
from app.config import Settings
from app.main import create_app
from tests.conftest import peft_adapter, upload

ADMIN = "admin-key-0123456789"
PREDICT = "predict-key-0123456789"
TRAIN = "train-key-0123456789"
LIMITED = "limited-key-0123456789"


@pytest.fixture
def secured(tmp_path: Path, tiny_base: FrozenBase) -> Iterator[TestClient]:
    keys = {
        ADMIN: ["admin"],
        f"sha256:{hashlib.sha256(PREDICT.encode()).hexdigest()}": ["predict"],
        TRAIN: ["train"],
        LIMITED: {"scopes": ["predict", "manage"], "adapters": ["mine"]},
    }
    settings = Settings(
        store=tmp_path / "store",
        api_keys=json.dumps(keys),
        _env_file=None,
    )
    with TestClient(create_app(settings, base=tiny_base)) as client:
        yield client


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_health_is_open_everything_else_needs_a_key(secured: TestClient) -> None:
    assert secured.get("/health/live").status_code == 200
    assert secured.get("/health/ready").status_code == 200
    for path in ("/v1/info", "/v1/adapters", "/metrics", "/v1/training-jobs", "/v1/datasets"):
        response = secured.get(path)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "missing_api_key"
    bad = secured.get("/v1/info", headers=_auth("not-a-key-at-all-xx"))
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"


def test_scopes_are_enforced(secured: TestClient, tiny_bert_dir: Path, tmp_path: Path) -> None:
    files = peft_adapter(tiny_bert_dir, out=tmp_path / "a")
    data = {"name": "x", "task": "classification", "labels": '["a","b"]'}
    multipart = {k: (k, v) for k, v in files.items() if k != "README.md"}
    denied = secured.post("/v1/adapters", data=data, files=multipart, headers=_auth(PREDICT))
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "insufficient_scope"
    assert (
        secured.post("/v1/adapters", data=data, files=multipart, headers=_auth(ADMIN)).status_code
        == 201
    )
    ok = secured.post("/v1/adapters/x/predict", json={"inputs": ["hi"]}, headers=_auth(PREDICT))
    assert ok.status_code == 200
    assert secured.get("/v1/training-jobs", headers=_auth(PREDICT)).status_code == 403
    assert secured.get("/v1/training-jobs", headers=_auth(TRAIN)).status_code == 200
    assert (
        secured.post(
            "/v1/adapters/x/predict", json={"inputs": ["hi"]}, headers=_auth(TRAIN)
        ).status_code
        == 403
    )
    assert secured.get("/v1/info", headers=_auth(TRAIN)).status_code == 200


def test_a_key_limited_to_adapters(
    secured: TestClient, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    files = peft_adapter(tiny_bert_dir, out=tmp_path / "a")
    multipart = {k: (k, v) for k, v in files.items() if k != "README.md"}
    for name, key, status in (
        ("mine", LIMITED, 201),
        ("other", LIMITED, 403),
        ("other", ADMIN, 201),
    ):
        response = secured.post(
            "/v1/adapters",
            data={"name": name, "labels": '["a","b"]'},
            files=multipart,
            headers=_auth(key),
        )
        assert response.status_code == status, (name, key, response.text)
    assert (
        secured.post(
            "/v1/adapters/other/predict", json={"inputs": ["hi"]}, headers=_auth(LIMITED)
        ).json()["error"]["code"]
        == "adapter_forbidden"
    )
    assert (
        secured.post(
            "/v1/adapters/mine/predict", json={"inputs": ["hi"]}, headers=_auth(LIMITED)
        ).status_code
        == 200
    )
    listed = secured.get("/v1/adapters", headers=_auth(LIMITED)).json()["data"]
    assert [a["name"] for a in listed] == ["mine"]
    many = secured.post(
        "/v1/predict",
        json={"adapters": ["mine", "other"], "inputs": ["hi"]},
        headers=_auth(LIMITED),
    )
    assert many.status_code == 403


def test_no_keys_means_loopback_only(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="loopback"):
        Settings(store=tmp_path, host="0.0.0.0", _env_file=None)
    Settings(
        store=tmp_path,
        host="0.0.0.0",
        api_keys={ADMIN: ["admin"]},
        _env_file=None,
    )


def test_short_keys_and_unknown_scopes_are_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        Settings(store=tmp_path, api_keys={"short": ["admin"]}, _env_file=None)
    with pytest.raises(ValidationError):
        Settings(store=tmp_path, api_keys={ADMIN: ["root"]}, _env_file=None)


def test_upload_helper_still_works_without_keys(
    client: TestClient, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    files = peft_adapter(tiny_bert_dir, out=tmp_path / "a")
    assert upload(client, "open", files, labels=["a", "b"]).status_code == 201
