"""The dashboard's routes (public static files, strict headers) and GET /v1/metrics/summary."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from app.api.routes.ui import UI_DIR
from app.base import FrozenBase
from app.config import Settings
from app.main import create_app
from app.runtime.metrics import Metrics
from app.runtime.metrics_summary import MetricsWindow, quantile
from tests.conftest import peft_adapter, upload

PREDICT = "predict-key-0123456789"
ADMIN = "admin-key-0123456789"


@pytest.fixture
def secured(tmp_path: Path, tiny_base: FrozenBase) -> Iterator[TestClient]:
    settings = Settings(
        store=tmp_path / "store",
        api_keys=json.dumps({PREDICT: ["predict"], ADMIN: ["admin"]}),
        max_wait_ms=1.0,
        _env_file=None,
    )
    with TestClient(create_app(settings, base=tiny_base)) as client:
        yield client


def test_page_and_assets_are_served_without_a_key(secured: TestClient) -> None:
    """The files hold no data: a browser must load them before it can ask for a key."""
    for path in ("/", "/ui", "/ui/"):
        response = secured.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        assert "/ui/static/main.js" in response.text
    scripts = re.findall(r'from "\./([a-z]+\.js)"', (UI_DIR / "static" / "main.js").read_text())
    assert scripts, "main.js imports its modules"
    for name in ["main.js", "dashboard.css", *scripts]:
        response = secured.get(f"/ui/static/{name}")
        assert response.status_code == 200, name
        assert response.content == (UI_DIR / "static" / name).read_bytes()
    assert secured.get("/ui/static/main.js").headers["content-type"].startswith("text/javascript")
    assert secured.head("/").status_code == 200
    assert secured.get("/v1/metrics/summary").status_code == 401  # data still needs a key


def test_headers_forbid_inline_script_and_framing(secured: TestClient) -> None:
    headers = secured.get("/").headers
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "name", ["../main.py", "..%2F..%2Fconfig.py", "%2e%2e%2fapi.py", "nope.js", "index.html"]
)
def test_static_serves_only_its_own_files(secured: TestClient, name: str) -> None:
    response = secured.get(f"/ui/static/{name}")
    assert response.status_code == 404
    assert response.json()["error"]["code"]
    assert b"import" not in response.content


def test_no_page_inserts_data_as_markup() -> None:
    """Adapter labels and job fields are user input: the scripts build text nodes only."""
    for path in (UI_DIR / "static").glob("*.js"):
        source = path.read_text()
        for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert banned not in source, f"{path.name} uses {banned}"


def test_summary_counts_requests_latency_and_residency(
    secured: TestClient, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    secured.headers.update(admin)
    files = peft_adapter(tiny_bert_dir, out=tmp_path / "a")
    assert upload(secured, "sst", files, labels=["neg", "pos"]).status_code == 201
    for _ in range(3):
        response = secured.post("/v1/adapters/sst/predict", json={"inputs": ["fine"]})
        assert response.status_code == 200, response.text
    assert secured.post("/v1/adapters/sst/predict", json={"inputs": []}).status_code >= 400
    body = secured.get("/v1/metrics/summary", headers={"Authorization": f"Bearer {PREDICT}"}).json()
    assert body["object"] == "metrics_summary"
    assert body["requests_total"] >= 3 and body["requests_per_second"] > 0
    latency = body["latency_seconds"]
    assert latency["count"] >= 3 and 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert body["resident"]["device"]["bytes"] > 0 and body["resident"]["device"]["adapters"] == 1
    [sst] = [a for a in body["adapters"] if a["adapter"] == "sst"]
    assert sst["requests_total"] == 3 and sst["errors_total"] == 0


def test_window_rates_use_the_reading_of_a_minute_ago() -> None:
    """Rates and percentiles cover what happened since the oldest reading in the window."""
    metrics = Metrics()
    window = MetricsWindow(metrics.registry, window_s=60)
    t0 = window.started
    metrics.requests.labels(adapter="a", status="ok").inc(10)
    metrics.latency.labels(adapter="a").observe(4.0)
    first = window.summary(now=t0 + 10)
    assert first.requests_per_second == 1.0 and first.window_seconds == 10
    for step in range(1, 8):  # a reading every 10 s; 10 fast requests each time
        metrics.requests.labels(adapter="a", status="ok").inc(10)
        for _ in range(10):
            metrics.latency.labels(adapter="a").observe(0.003)
        later = window.summary(now=t0 + 10 + 10 * step)
    assert later.window_seconds == pytest.approx(60, abs=10)
    assert later.requests_per_second == pytest.approx(1.0)
    assert later.latency_seconds.p99 is not None and later.latency_seconds.p99 <= 0.005
    assert later.requests_total == 80


@given(
    st.lists(st.floats(min_value=0.0, max_value=100.0, allow_nan=False), min_size=1, max_size=200),
    st.sampled_from([0.5, 0.9, 0.99]),
)
def test_quantile_lies_in_the_bucket_of_the_true_quantile(values: list[float], q: float) -> None:
    """Interpolated inside a bucket: never outside the bucket that holds the exact quantile."""
    bounds = (0.01, 0.1, 1.0, 10.0)
    histogram = Histogram("h", "h", buckets=bounds, registry=CollectorRegistry())
    for value in values:
        histogram.observe(value)
    buckets = [
        (float(s.labels["le"]), s.value)
        for s in next(iter(histogram.collect())).samples
        if s.name == "h_bucket"
    ]
    got = quantile(q, buckets)
    assert got is not None
    exact = sorted(values)[max(0, math.ceil(q * len(values)) - 1)]
    edges = (0.0, *bounds)
    upper = next((b for b in bounds if exact <= b), math.inf)
    lower = max(e for e in edges if e < upper)
    assert lower - 1e-9 <= got <= min(upper, bounds[-1]) + 1e-9


def test_quantile_without_observations_is_none() -> None:
    assert quantile(0.5, []) is None
    assert quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None
