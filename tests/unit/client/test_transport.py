"""The client's parsing of what comes back: Retry-After, error bodies (ours or a proxy's),
job events of unknown kinds, and downloaded zips (no entry may land outside the folder)."""

from __future__ import annotations

import email.utils
import io
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.client import NotFoundError, ResponseFormatError, RetryPolicy, ServerError
from app.client._files import extract_adapter, rows_jsonl
from app.client._transport import retry_after
from app.client.errors import SwitchyardAPIError, api_error
from app.client.models import JobEvent, LossEvent, StatusEvent, parse_event


def reply(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=httpx.Request("GET", "http://x/y"))


def test_retry_after_seconds_and_http_dates() -> None:
    assert retry_after(reply(429, **{"Retry-After": "3"})) == 3.0
    assert retry_after(reply(429, **{"Retry-After": " 1.5 "})) == 1.5
    assert retry_after(reply(429)) is None
    later = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= (retry_after(reply(503, **{"Retry-After": later})) or 0) <= 10.0
    past = email.utils.formatdate(time.time() - 100, usegmt=True)
    assert retry_after(reply(503, **{"Retry-After": past})) == 0.0
    assert retry_after(reply(429, **{"Retry-After": "soon"})) is None


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
def test_any_retry_after_header_is_a_wait_or_none(value: str) -> None:
    wait = retry_after(reply(429, **{"Retry-After": value}))
    assert wait is None or wait >= 0.0


def test_retry_policy_is_bounded() -> None:
    policy = RetryPolicy(max_retries=2, backoff_s=0.25, max_wait_s=5)
    assert [policy.delay(reply(503), n) for n in range(3)] == [0.25, 0.5, None]
    assert policy.delay(reply(429, **{"Retry-After": "2"}), 0) == 2.0
    assert policy.delay(reply(429, **{"Retry-After": "60"}), 0) is None  # longer than we wait
    assert policy.delay(reply(500), 0) is None and policy.delay(reply(200), 0) is None


def test_errors_from_our_body_and_from_a_proxy_page() -> None:
    request = httpx.Request("GET", "http://x/v1/adapters/a")
    ours = httpx.Response(
        404,
        json={"error": {"code": "adapter_not_found", "message": "no adapter 'a'", "param": "name"}},
        request=request,
    )
    error = api_error(ours)
    assert isinstance(error, NotFoundError)
    assert (error.status, error.code, error.message, error.param) == (
        404,
        "adapter_not_found",
        "no adapter 'a'",
        "name",
    )
    proxy = httpx.Response(502, text="<html>Bad Gateway</html>", request=request)
    error = api_error(proxy)
    assert isinstance(error, ServerError) and error.code == "http_502"
    assert "Bad Gateway" in error.message and error.param is None
    teapot = api_error(httpx.Response(418, json={"error": "short"}, request=request))
    assert type(teapot) is SwitchyardAPIError and teapot.code == "http_418"


def test_events_are_typed_and_unknown_kinds_kept() -> None:
    loss = parse_event({"id": 1, "kind": "loss", "data": {"step": 3, "loss": None}})
    assert isinstance(loss, LossEvent) and loss.step == 3 and loss.loss is None
    status = parse_event(
        {
            "id": 2,
            "kind": "status",
            "data": {"status": "failed", "error": {"code": "c", "message": "m"}},
        }
    )
    assert isinstance(status, StatusEvent) and status.error is not None
    assert status.error.code == "c"
    future = parse_event({"id": 3, "kind": "checkpoint", "data": {"path": "x"}, "new": 1})
    assert type(future) is JobEvent and future.model_extra == {"new": 1}


def zipped(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_extract_writes_plain_files_only(tmp_path: Path) -> None:
    written = extract_adapter(
        zipped({"adapter_config.json": b"{}", "w.safetensors": b"1"}), tmp_path
    )
    assert sorted(p.name for p in written) == ["adapter_config.json", "w.safetensors"]
    with pytest.raises(ResponseFormatError):
        extract_adapter(b"not a zip", tmp_path / "x")


@given(st.sampled_from(["../evil", "/etc/evil", "a/../../evil", "sub/evil", "..", "a\\..\\b/c"]))
def test_extract_refuses_paths(name: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        target = Path(root) / "out"
        with pytest.raises(ResponseFormatError):
            extract_adapter(zipped({"ok.json": b"{}", name: b"x"}), target)
        assert not (Path(root) / "evil").exists()


@given(st.lists(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3), min_size=1))
def test_rows_are_one_json_object_a_line(rows: list[dict[str, str]]) -> None:
    import json

    lines = rows_jsonl(rows).decode("utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows
