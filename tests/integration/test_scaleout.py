"""`switchyard serve --replicas 2` on a local Ray cluster with the PostgreSQL catalog: adapters
uploaded through the ingress, predictions routed by adapter and equal to PEFT's (as the
single-process service's are), and a replica killed under load answering only 200, 429 or
503 with Retry-After until Ray has replaced it; a job's event stream flowing through the
ingress while it trains; and the trainer deployment killed leaving the job `interrupted`
(its lease expires) and no version of its adapter in the store."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import peft_adapter
from tests.integration.conftest import REPO, free_port
from tests.unit.scaleout.pgtools import fresh_schema, needs_pg, pg_url

pytest.importorskip("ray.serve", reason="the `ray` extra is not installed")
pytestmark = [pytest.mark.slow, needs_pg]

ADAPTERS, PREDICTS = 8, 200
TEXTS = ["a gorgeous, witty, seductive movie", "the plot is a mess and the acting worse"]
REPLICA = "x-switchyard-replica"
LEASE_S = 6


@dataclass
class Cluster:
    """The Ray-served service: its HTTP client and the `switchyard serve` process."""

    http: httpx.Client
    process: subprocess.Popen[bytes]
    store: Path


def _wait_ready(http: httpx.Client, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"switchyard serve exited with {process.returncode}"
        try:
            if http.get("/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise AssertionError(f"the Ray-served service was not ready within {timeout} s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    store = tmp_path_factory.mktemp("shared-store")
    port = free_port()
    with fresh_schema() as schema:
        env = {
            **os.environ,
            "SWITCHYARD_STORE": str(store),
            "SWITCHYARD_PORT": str(port),
            "SWITCHYARD_DATABASE_URL": pg_url(schema),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "RAY_AUTH_MODE": "disabled",
            # Short leases, so the killed trainer's job is reaped within seconds.
            "SWITCHYARD_JOB_LEASE_S": str(LEASE_S),
            "SWITCHYARD_JOB_HEARTBEAT_S": "1",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--replicas", "2", "--log-level", "warning"],
            cwd=REPO,
            env=env,
        )
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        try:
            _wait_ready(http, process, timeout=300)
            yield Cluster(http, process, store)
        finally:
            http.close()
            process.send_signal(signal.SIGINT)
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def expected(cluster: Cluster, minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """8 adapters uploaded through the ingress, and PEFT's logits for each."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    out: dict[str, torch.Tensor] = {}
    for i in range(ADAPTERS):
        folder = tmp_path_factory.mktemp(f"adapter{i}")
        files = peft_adapter(minilm_dir, num_labels=2, r=4, seed=100 + i, out=folder)
        response = cluster.http.post(
            "/v1/adapters",
            data={"name": f"ad{i}", "task": "classification", "labels": json.dumps(["a", "b"])},
            files={k: (k, v) for k, v in files.items() if k != "README.md"},
        )
        assert response.status_code == 201, response.text
        assert response.headers[REPLICA]
        base = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
        model = PeftModel.from_pretrained(base, folder).eval()
        with torch.no_grad():
            out[f"ad{i}"] = torch.stack(
                [model(**tokenizer(text, return_tensors="pt")).logits[0] for text in TEXTS]
            )
    return out


def _predict(http: httpx.Client, name: str) -> httpx.Response:
    body = {"inputs": TEXTS, "parameters": {"top_k": None, "function_to_apply": "none"}}
    return http.post(f"/v1/adapters/{name}/predict", json=body)


def _logits(response: httpx.Response) -> torch.Tensor:
    rows = response.json()["outputs"]
    return torch.tensor([[{o["label"]: o["score"] for o in row}[k] for k in "ab"] for row in rows])


def test_predicts_are_routed_by_adapter_and_equal_peft(
    cluster: Cluster, expected: dict[str, torch.Tensor]
) -> None:
    for i in range(ADAPTERS):  # each adapter's first request places it on a replica
        assert _predict(cluster.http, f"ad{i}").status_code == 200
    time.sleep(2)  # replicas report the ids they hold every 0.1 s; let the router see them
    names = [f"ad{random.Random(i).randrange(ADAPTERS)}" for i in range(PREDICTS)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda name: _predict(cluster.http, name), names))
    replicas: dict[str, Counter[str]] = defaultdict(Counter)
    for name, response in zip(names, responses, strict=True):
        assert response.status_code == 200, response.text
        assert (_logits(response) - expected[name]).abs().max().item() < 1e-4, name
        replicas[name][response.headers[REPLICA]] += 1
    for name, counts in replicas.items():
        share = counts.most_common(1)[0][1] / sum(counts.values())
        assert share >= 0.9, f"{name} spread over replicas: {dict(counts)}"
    assert len({r for counts in replicas.values() for r in counts}) == 2  # both replicas work


def test_a_job_trained_through_the_ingress_is_served_by_both_replicas(
    cluster: Cluster, expected: dict[str, torch.Tensor]
) -> None:
    # Which replica holds each uploaded adapter: a multi-adapter call keyed by one of them
    # runs on that replica, so two keys on two replicas reach both.
    holder = {f"ad{i}": _predict(cluster.http, f"ad{i}").headers[REPLICA] for i in range(8)}
    keys = {replica: name for name, replica in holder.items()}
    assert len(keys) == 2, holder
    examples = [{"text": f"good film {i}", "label": "pos"} for i in range(8)]
    examples += [{"text": f"bad film {i}", "label": "neg"} for i in range(8)]
    body = {
        "adapter": "trained",
        "method": "lora",
        "examples": examples,
        "hyperparameters": {"max_steps": 2, "epochs": 1},
    }
    created = cluster.http.post("/v1/training-jobs", json=body)
    assert created.status_code == 202, created.text
    job_url = f"/v1/training-jobs/{created.json()['id']}"
    deadline = time.monotonic() + 180
    while (job := cluster.http.get(job_url).json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(1)
    assert job["status"] == "succeeded", job
    finished, seen = time.monotonic(), set[str]()
    while seen != set(keys):
        assert time.monotonic() - finished < 5, f"served by {seen} only"
        for key in keys.values():
            multi = {"adapters": [key, "trained"], "inputs": TEXTS}
            response = cluster.http.post("/v1/predict", json=multi)
            if response.status_code == 200:
                seen.add(response.headers[REPLICA])
        time.sleep(0.1)


def _pids(title: str) -> list[int]:
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in listing.splitlines() if title in line]


def _runtime_pids() -> list[int]:
    return _pids("ServeReplica:switchyard:Runtime")


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_a_replica_killed_under_load_gives_only_200_429_or_503(
    cluster: Cluster, expected: dict[str, torch.Tensor]
) -> None:
    pids = _runtime_pids()
    assert len(pids) == 2, pids
    statuses: list[tuple[int, str | None]] = []

    def load(worker: int) -> None:
        for n in range(25):
            response = _predict(cluster.http, f"ad{(worker + n) % ADAPTERS}")
            statuses.append((response.status_code, response.headers.get("retry-after")))

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(load, w) for w in range(6)]
        time.sleep(1.0)
        os.kill(pids[0], signal.SIGKILL)
        for future in futures:
            future.result()
    assert {code for code, _ in statuses} <= {200, 429, 503}, Counter(statuses)
    assert all(after is not None and int(after) >= 1 for code, after in statuses if code != 200)
    deadline = time.monotonic() + 120
    while True:  # Ray replaces the replica; then every adapter answers again
        codes = {_predict(cluster.http, f"ad{i}").status_code for i in range(ADAPTERS)}
        if codes == {200}:
            break
        assert time.monotonic() < deadline, f"not recovered: {codes}"
        time.sleep(2)


def _job(http: httpx.Client, url: str) -> dict | None:
    """The job, or None while the ingress has no replica to ask (503 during restarts)."""
    try:
        response = http.get(url)
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


def _first_lines(lines: Iterator[str], count: int) -> list[str]:
    """The first `count` non-empty lines of a stream (then stop reading it)."""
    kept: list[str] = []
    for line in lines:
        if line.strip():
            kept.append(line)
        if len(kept) == count:
            break
    return kept


def test_killing_the_trainer_interrupts_the_job_and_keeps_no_version(cluster: Cluster) -> None:
    # The trainer is a deployment of its own (app/scaleout/trainer.py): killing its process
    # stops the lease's heartbeat, and the job can only end through the lease expiring.
    examples = [{"text": f"good film {i}", "label": "pos"} for i in range(32)]
    examples += [{"text": f"bad film {i}", "label": "neg"} for i in range(32)]
    body = {
        "adapter": "doomed",
        "method": "lora",
        "examples": examples,
        "hyperparameters": {"epochs": 100, "selection": "fixed"},
    }
    created = cluster.http.post("/v1/training-jobs", json=body)
    assert created.status_code == 202, created.text
    url = f"/v1/training-jobs/{created.json()['id']}"
    deadline = time.monotonic() + 120
    while (job := _job(cluster.http, url)) is None or job["status"] != "running":
        assert job is None or job["status"] in ("queued", "validating"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    # The job's event stream flows through the ingress while it trains (not buffered to the
    # job's end, which is minutes away).
    with cluster.http.stream("GET", f"{url}/events", params={"stream": "true"}, timeout=60) as sse:
        assert sse.status_code == 200 and sse.headers[REPLICA]
        assert any(line.startswith("data:") for line in _first_lines(sse.iter_lines(), 3))
    job = _job(cluster.http, url)
    assert job is not None and job["status"] == "running", job
    trainers = _pids("ServeReplica:switchyard:Trainer")
    assert len(trainers) == 1, trainers
    rss = {p: _rss_mb(p) for p in trainers + _runtime_pids()}
    print(f"RSS MB, trainer first then runtime replicas: {list(rss.values())}")
    os.kill(trainers[0], signal.SIGKILL)
    killed = time.monotonic()
    while (job := _job(cluster.http, url)) is None or job["status"] == "running":
        assert time.monotonic() - killed < 180, f"still running: {job}"
        time.sleep(1)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "interrupted", job
    assert time.monotonic() - killed >= LEASE_S - 1  # ended by the lease, not by anything sooner
    folder = cluster.store / "doomed"
    versions = [p.name for p in folder.iterdir() if p.name.isdigit()] if folder.exists() else []
    assert versions == [], versions
    assert cluster.http.get("/v1/adapters/doomed").status_code == 404
