"""The dashboard in headless Chromium against the live app on a tiny base: a job trained
through the API shows its curve, its adapter shows in the table with lineage, the playground
answers, a job can be cancelled, and with API keys the page asks for one and respects scopes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from tests.browser.live import Live, screenshot, serve
from tests.conftest import peft_adapter

MIN_POINTS = 10  # loss points the job's curve must show
ROWS = [
    {"text": f"{word} film number {i}", "label": label}
    for i in range(12)
    for word, label in (("wonderful", "positive"), ("awful", "negative"))
]
PREDICT = "predict-key-0123456789"
ADMIN = "admin-key-0123456789"
HOSTILE = ['<img src=x onerror="window.__pwned=1">', "<b>bold</b> & co"]


def _upload(live: Live, name: str, files: dict[str, bytes], **form: str) -> None:
    parts = {k: (k, v) for k, v in files.items() if k.endswith((".json", ".safetensors"))}
    response = live.http.post("/v1/adapters", data={"name": name, **form}, files=parts)
    assert response.status_code == 201, response.text


def _start_job(live: Live, adapter: str, **hyperparameters: Any) -> str:
    body = {
        "adapter": adapter,
        "method": "lora",
        "examples": ROWS,
        # One run judged on its validation rows (not folds): the curves these tests watch.
        "hyperparameters": {
            "log_every_steps": 1,
            "seed": 0,
            "selection": "validation_metric",
            **hyperparameters,
        },
    }
    response = live.http.post("/v1/training-jobs", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def live(
    make_base: Callable[[], Any], tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """The app without keys, holding two uploaded adapters besides what the tests train."""
    work = tmp_path_factory.mktemp("browser")
    settings = Settings(store=work / "store", max_wait_ms=1.0, _env_file=None)
    server = serve(settings, make_base())
    topics = ["world", "sports", "business", "science"]
    _upload(
        live=server,
        name="topic",
        files=peft_adapter(tiny_bert_dir, num_labels=4, out=work / "t"),
        task="classification",
        labels=json.dumps(topics),
    )
    ner = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG"]
    _upload(
        live=server,
        name="ner",
        files=peft_adapter(
            tiny_bert_dir,
            num_labels=5,
            task="token",
            target_modules=["query", "value"],
            seed=1,
            out=work / "n",
        ),
        task="token_classification",
        labels=json.dumps(ner),
    )
    yield server
    server.stop()


def test_dashboard_shows_the_trained_job_adapter_and_playground(live: Live, page: Any) -> None:
    started = time.monotonic()
    # A random head: the LP-FT start solves these rows at step 0, and a curve that never
    # moves is a flat line (nothing to watch grow).
    job_id = _start_job(
        live,
        "sentiment",
        epochs=6,
        batch_size=4,
        eval_every_steps=4,
        early_stopping_patience=None,
        head_init="random",
    )
    page.goto(f"{live.url}/#/jobs/{job_id}")
    # The curve grows from the event stream; the job's badge turns green when it ends.
    page.wait_for_function(
        "n => [...document.querySelectorAll('#loss-chart polyline')].some(p =>"
        " Number(p.dataset.points) >= n && p.getAttribute('points').split(' ').length >= n)",
        arg=MIN_POINTS,
    )
    page.wait_for_selector("h2 .badge.succeeded", timeout=60_000)
    page.wait_for_selector("#metric-chart polyline")
    assert page.locator("#job-result a").inner_text() == "sentiment v1"
    assert page.locator("#cancel-job").count() == 0  # nothing to cancel once it is over
    screenshot(page, "dashboard-job")

    page.goto(f"{live.url}/")
    row = page.wait_for_selector("#adapter-sentiment")
    text = row.inner_text()
    for expected in ("sentiment", "lora", "classification", "negative", "positive"):
        assert expected in text, text
    page.wait_for_selector(f"#job-{job_id} .badge.succeeded")
    assert page.locator("#adapters tbody tr").count() == 3
    assert "token_classification" in page.locator("#adapter-ner").inner_text()

    page.goto(f"{live.url}/#/adapters/sentiment")
    version = page.wait_for_selector("#versions tr[data-version='1']")
    assert job_id in version.inner_text() and "training" in version.inner_text()

    page.goto(f"{live.url}/#/playground?adapter=sentiment")
    page.fill("#playground-form textarea", "a wonderful film\nan awful film")
    page.click("#playground-form button[type=submit]")
    page.wait_for_selector("#playground-answer .answer[data-index='1'] .score-row")
    first = page.locator("#playground-answer .answer[data-index='0']").inner_text()
    assert "a wonderful film" in first and ("positive" in first or "negative" in first)
    raw = json.loads(page.locator("#raw-answer").text_content())
    assert raw["adapter"] == "sentiment" and len(raw["outputs"]) == 2
    screenshot(page, "dashboard-playground")

    page.select_option("#playground-adapter", "ner")
    page.fill("#playground-form textarea", "Angela Merkel met the EU")
    page.click("#playground-form button[type=submit]")
    page.wait_for_selector("#playground-answer .answer[data-index='0']")

    page.goto(f"{live.url}/#/metrics")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#metrics-adapters td')]"
        ".some(td => td.textContent === 'sentiment')"
    )
    assert (
        page.locator("#stat-p50 .stat-value").inner_text() != "\N{EN DASH}"
    )  # a number, not the placeholder
    page.goto(f"{live.url}/")
    page.wait_for_selector(f"#job-{job_id}")
    page.wait_for_selector("#adapter-sentiment .metric")
    screenshot(page, "dashboard-overview")
    assert time.monotonic() - started < 60


def test_a_running_job_is_cancelled_from_its_page(live: Live, page: Any) -> None:
    job_id = _start_job(live, "never", epochs=100, batch_size=1, early_stopping_patience=None)
    page.goto(f"{live.url}/#/jobs/{job_id}")
    page.wait_for_function(
        "() => Number(document.querySelector('#loss-chart polyline')?.dataset.points || 0) >= 2"
    )
    page.click("#cancel-job")
    page.wait_for_selector("h2 .badge.cancelled")
    assert live.http.get(f"/v1/training-jobs/{job_id}").json()["status"] == "cancelled"
    assert live.http.get("/v1/adapters/never").status_code == 404


def test_a_candidates_table_is_shown_when_the_job_has_one(live: Live, page: Any) -> None:
    """Jobs that compare candidates (method `auto`) list them in `candidates`; the page draws
    whatever columns they have, as text. The field is added to a real job's answer here."""
    job_id = _start_job(live, "cands", epochs=1, batch_size=8)
    candidates = [
        {"method": "lora", "rank": 8, "accuracy": 0.91, "seconds": 12.5, "chosen": True},
        {"method": "ia3", "accuracy": 0.87, "seconds": 4.0, "note": HOSTILE[0]},
    ]

    def with_candidates(route: Any) -> None:
        response = route.fetch()
        route.fulfill(response=response, json={**response.json(), "candidates": candidates})

    page.route(f"{live.url}/v1/training-jobs/{job_id}", with_candidates)
    page.goto(f"{live.url}/#/jobs/{job_id}")
    table = page.wait_for_selector("#candidates")
    headers = [th.inner_text() for th in table.query_selector_all("th")]
    assert headers == ["method", "rank", "accuracy", "seconds", "chosen", "note"]
    assert page.locator("#candidates tbody tr").count() == 2
    assert HOSTILE[0] in table.inner_text() and table.query_selector("img") is None
    assert page.evaluate("window.__pwned") is None


@pytest.fixture
def secured(make_base: Callable[[], Any], tiny_bert_dir: Path, tmp_path: Path) -> Iterator[Live]:
    keys = {PREDICT: ["predict"], ADMIN: ["admin"]}
    settings = Settings(
        store=tmp_path / "store",
        api_keys=json.dumps(keys),
        max_wait_ms=1.0,
        _env_file=None,
    )
    server = serve(settings, make_base())
    server.http.headers["Authorization"] = f"Bearer {ADMIN}"
    _upload(
        live=server,
        name="hostile",
        files=peft_adapter(tiny_bert_dir, out=tmp_path / "h"),
        task="classification",
        labels=json.dumps(HOSTILE),
    )
    yield server
    server.stop()


def test_with_keys_the_page_asks_for_one_and_respects_its_scopes(secured: Live, page: Any) -> None:
    """A predict key sees adapters and the playground, not jobs; pinning is refused and the
    button disabled; the key stays in sessionStorage; labels with markup stay text."""
    page.goto(f"{secured.url}/")
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", PREDICT)
    page.click("#key-form button[type=submit]")
    row = page.wait_for_selector("#adapter-hostile")
    assert page.evaluate("sessionStorage.getItem('switchyard.api_key')") == PREDICT
    assert page.evaluate("localStorage.length") == 0
    chips = page.locator("#adapter-hostile .chip").all_text_contents()
    assert chips == HOSTILE
    assert row.query_selector("img, b") is None and page.evaluate("window.__pwned") is None
    page.wait_for_selector("#nav a[data-nav=jobs]", state="hidden")
    assert "lacks scope 'train'" in page.locator("main").inner_text()
    screenshot(page, "dashboard-scoped-overview")
    page.click("#adapter-hostile button.pin")
    page.wait_for_selector("#adapter-hostile button.pin:disabled")
    assert secured.http.get("/v1/adapters/hostile").json()["pinned"] is False

    page.goto(f"{secured.url}/#/playground?adapter=hostile")
    page.fill("#playground-form textarea", "some text")
    page.click("#playground-form button[type=submit]")
    page.wait_for_selector("#playground-answer .score-row")
    labels = page.locator("#playground-answer .score-label").all_text_contents()
    assert labels and set(labels) <= set(HOSTILE)
    assert page.evaluate("window.__pwned") is None
    screenshot(page, "dashboard-scoped-key")
