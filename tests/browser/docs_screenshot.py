"""Make docs/dashboard.png: the dashboard over a realistic service (the packaged MiniLM base,
adapters trained on the shared datasets, some traffic), in the same headless Chromium.

    HF_HUB_OFFLINE=1 python3 -m tests.browser.docs_screenshot [--out docs/dashboard.png]

Minutes on a CPU; not a test. The job page is saved next to it as dashboard-job.png under
tests/artifacts/ for a look, not committed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from app.base import load_base
from app.config import Settings
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, playwright_sync
from tests.browser.live import ARTIFACTS, Live, serve

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def rows(path: Path, count: int, *, step: int = 1) -> bytes:
    with path.open() as handle:
        picked = itertools.islice(handle, 0, count * step, step)
        return "".join(picked).encode()


def dataset(live: Live, name: str, data: bytes) -> str:
    response = live.http.post("/v1/datasets", files={"file": (f"{name}.jsonl", data)})
    response.raise_for_status()
    return str(response.json()["id"])


def train(live: Live, body: dict[str, Any]) -> str:
    response = live.http.post("/v1/training-jobs", json=body)
    response.raise_for_status()
    return str(response.json()["id"])


def wait(live: Live, job_id: str, *, until: tuple[str, ...]) -> dict[str, Any]:
    while True:
        job: dict[str, Any] = live.http.get(f"/v1/training-jobs/{job_id}").json()
        if job["status"] in until:
            return job
        time.sleep(1)


def build_state(live: Live) -> str:
    """Three trained adapters, one pinned, a job running, and traffic; the SST-2 job's id."""
    sst_train = dataset(live, "sst2-train", rows(DATASETS / "sst2" / "train.jsonl", 800, step=50))
    sst_dev = dataset(live, "sst2-dev", rows(DATASETS / "sst2" / "dev.jsonl", 200))
    trec = dataset(live, "trec", rows(DATASETS / "trec" / "train.jsonl", 600, step=9))
    spam = dataset(live, "sms-spam", rows(DATASETS / "sms_spam" / "train.jsonl", 400, step=10))
    sst_job = train(
        live,
        {
            "adapter": "sst2",
            "method": "lora",
            "training_data": sst_train,
            "validation_data": sst_dev,
            "hyperparameters": {
                "epochs": 3,
                "batch_size": 16,
                "eval_every_steps": 10,
                "log_every_steps": 2,
                "early_stopping_patience": None,
            },
        },
    )
    trec_job = train(
        live, {"adapter": "trec-coarse", "method": "linear_probe", "training_data": trec}
    )
    spam_job = train(
        live,
        {
            "adapter": "sms-spam",
            "method": "ia3",
            "training_data": spam,
            "hyperparameters": {"epochs": 2},
        },
    )
    for job_id in (sst_job, trec_job, spam_job):
        print(job_id, wait(live, job_id, until=("succeeded", "failed", "cancelled"))["status"])
    live.http.patch("/v1/adapters/sst2", json={"pinned": True}).raise_for_status()
    texts = [
        "a gorgeous, witty, seductive movie",
        "the plot is nowhere near as clever as it thinks",
        "What is the capital of Peru ?",
        "WINNER!! claim your free prize now",
        "see you at lunch tomorrow",
    ]
    for name, text in itertools.product(["sst2", "trec-coarse", "sms-spam"], texts * 6):
        live.http.post(f"/v1/adapters/{name}/predict", json={"inputs": [text]})
    running = train(
        live,
        {
            "adapter": "sst2",
            "method": "prefix",
            "training_data": sst_train,
            "hyperparameters": {"epochs": 20},
        },
    )
    wait(live, running, until=("running",))
    return sst_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        settings = Settings(store=Path(work) / "store", _env_file=None)
        live = serve(settings, load_base(settings))
        try:
            sst_job = build_state(live)
            with playwright_sync.sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
                )
                page = browser.new_page(viewport={"width": 1280, "height": 820})
                page.goto(f"{live.url}/#/jobs/{sst_job}")
                page.wait_for_selector("#metric-chart polyline")
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)
                page.goto(f"{live.url}/")
                page.wait_for_selector("#adapter-sst2 .metric")
                page.wait_for_selector("#jobs .badge.running")
                time.sleep(2.5)  # two metrics polls: the sparkline has points
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
        finally:
            live.stop()
    print(json.dumps({"out": str(args.out), "bytes": args.out.stat().st_size}))


if __name__ == "__main__":
    main()
