"""Concurrency: predicts, uploads, deletes and pins racing on the same names over real HTTP.

Each uploaded version's weights say which upload they came from: the classifier head is zero
but for a bias that makes label `k = upload % 8` win, and the labels are named after the
upload. So a predict answer reveals the upload whose weights served it, and that upload's 201
must have named the same version. Invariants: no 5xx ever, every answer's `version` matches
its outputs, the list is always 200, and at the end the store is whole (no temporary or trash
leftovers, versions strictly increasing, no number handed out twice). Also the regressions of
issue 13 item 6 one by one: a predict whose version is deleted before it loads is a clean
404, and concurrent DELETEs of one name give one 200 and 404s, never a 500.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load, save
from transformers import PreTrainedTokenizerBase

from app.config import Settings
from app.registry.store import META_FILE, AdapterStore
from tests.conftest import peft_adapter
from tests.unit.client.live import live_service, tiny_base

NAMES = ["alpha", "beta", "gamma"]
HEADS = 8
SECONDS = 6.0
THREADS = 8
HEAD_BIAS = "base_model.model.classifier.bias"
HEAD_WEIGHT = "base_model.model.classifier.weight"


@dataclass
class Shared:
    """What the workers saw: statuses, which upload got which version, and any violation."""

    url: str
    files: dict[str, bytes]
    uploads: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    issued: dict[tuple[str, int], int] = field(default_factory=dict)  # (name, version) -> upload
    served: list[tuple[str, int, str]] = field(default_factory=list)  # (name, version, label)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, op: str, response: httpx.Response, allowed: set[int]) -> bool:
        with self.lock:
            self.statuses[(op, response.status_code)] += 1
            if response.status_code not in allowed:
                self.violations.append(f"{op}: {response.status_code} {response.text[:300]}")
        return response.status_code == 200 or response.status_code == 201


def _weights_of(upload: int, base: dict[str, bytes]) -> dict[str, bytes]:
    tensors = load(base["adapter_model.safetensors"])
    tensors[HEAD_WEIGHT] = torch.zeros_like(tensors[HEAD_WEIGHT])
    bias = torch.zeros(HEADS)
    bias[upload % HEADS] = 20.0
    tensors[HEAD_BIAS] = bias
    return {**base, "adapter_model.safetensors": save(tensors)}


def _labels_of(upload: int) -> list[str]:
    return [f"u{upload}-{k}" for k in range(HEADS)]


def _upload(http: httpx.Client, shared: Shared, name: str) -> None:
    with shared.lock:
        upload = next(shared.uploads)
    files = _weights_of(upload, shared.files)
    data = {"name": name, "task": "classification", "labels": json.dumps(_labels_of(upload))}
    response = http.post("/v1/adapters", data=data, files={k: (k, v) for k, v in files.items()})
    if shared.record("upload", response, {201}):
        key = (name, int(response.json()["version"]))
        with shared.lock:
            if key in shared.issued:
                shared.violations.append(f"version reused: {key}")
            shared.issued[key] = upload


def _predict(http: httpx.Client, shared: Shared, name: str, rng: random.Random) -> None:
    query = ""
    with shared.lock:
        known = [v for (n, v) in shared.issued if n == name]
    if known and rng.random() < 0.5:
        query = f"?version={rng.choice(known)}"  # a client pinned to a version it was given
    response = http.post(f"/v1/adapters/{name}/predict{query}", json={"inputs": ["a film"]})
    if shared.record("predict", response, {200, 404, 429}):
        body = response.json()
        top = body["outputs"][0]
        top = top[0] if isinstance(top, list) else top
        with shared.lock:
            shared.served.append((name, int(body["version"]), str(top["label"])))
        if query and int(query.split("=")[1]) != body["version"]:
            with shared.lock:
                shared.violations.append(f"asked {query}, got version {body['version']}")
    elif response.status_code == 404:
        code = response.json()["error"]["code"]
        if code not in {"adapter_not_found", "version_not_found"}:
            with shared.lock:
                shared.violations.append(f"predict 404 with code {code}")


def _delete(http: httpx.Client, shared: Shared, name: str, rng: random.Random) -> None:
    query = ""
    if rng.random() < 0.6:
        listed = http.get(f"/v1/adapters/{name}")
        shared.record("get", listed, {200, 404})
        if listed.status_code == 200:
            query = f"?version={listed.json()['latest_version']}"
    shared.record("delete", http.delete(f"/v1/adapters/{name}{query}"), {200, 404})


def _worker(shared: Shared, seed: int, deadline: float) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=shared.url, timeout=30) as http:
        while time.monotonic() < deadline:
            name = rng.choice(NAMES)
            roll = rng.random()
            if roll < 0.45:
                _predict(http, shared, name, rng)
            elif roll < 0.65:
                _upload(http, shared, name)
            elif roll < 0.78:
                _delete(http, shared, name, rng)
            elif roll < 0.88:
                body = {"pinned": rng.random() < 0.7}
                shared.record("pin", http.patch(f"/v1/adapters/{name}", json=body), {200, 404})
            else:
                shared.record("list", http.get("/v1/adapters"), {200})


def _check_served(shared: Shared) -> list[str]:
    """Each answer's label names the upload its weights came from; that upload got its version."""
    wrong = []
    for name, version, label in shared.served:
        upload = shared.issued.get((name, version))
        expected = f"u{upload}-{(upload or 0) % HEADS}"
        if label != expected:
            wrong.append(f"{name} v{version} answered {label}, its upload gives {expected}")
    return wrong


def _check_store(root: Path, shared: Shared) -> list[str]:
    store = AdapterStore(root)
    problems = [f"leftover {p}" for p in store.sweep()]
    for name in NAMES:
        versions = store.versions(name)
        issued = sorted(v for (n, v) in shared.issued if n == name)
        if versions != sorted(set(versions)) or not set(versions) <= set(issued):
            problems.append(f"{name}: stored {versions}, issued {issued}")
        if issued and store.high_water(name) < issued[-1]:
            problems.append(f"{name}: high-water {store.high_water(name)} < {issued[-1]}")
        for version in versions:
            meta = json.loads((store.version_dir(name, version) / META_FILE).read_bytes())
            if meta["version"] != version or meta["labels"] != _labels_of(
                shared.issued[(name, version)]
            ):
                problems.append(f"{name} v{version}: metadata {meta['version']}")
    return problems


@pytest.fixture(scope="module")
def files(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("concurrency-adapter")
    return peft_adapter(tiny_bert_dir, num_labels=HEADS, r=2, out=out)


@pytest.fixture
def service(
    tmp_path: Path, tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase
) -> Iterator[tuple[str, Path]]:
    settings = Settings(store=tmp_path / "store", max_wait_ms=2.0, _env_file=None)
    with live_service(settings, tiny_base(tiny_bert_dir, tokenizer)) as url:
        yield url, settings.store


def test_mixed_load_on_the_same_names_keeps_every_invariant(
    service: tuple[str, Path], files: dict[str, bytes]
) -> None:
    url, root = service
    shared = Shared(url=url, files=files)
    with httpx.Client(base_url=url, timeout=30) as http:
        for name in NAMES:
            _upload(http, shared, name)
    deadline = time.monotonic() + SECONDS
    workers = [
        threading.Thread(target=_worker, args=(shared, seed, deadline)) for seed in range(THREADS)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    print(sorted(shared.statuses.items()), len(shared.served))  # shown with -s or on failure
    assert shared.violations == [], shared.violations[:10]
    assert not [s for (_op, s) in shared.statuses if s >= 500]
    ops = {op for (op, status) in shared.statuses if status in (200, 201)}
    assert ops >= {"predict", "upload", "delete", "pin", "list"}, shared.statuses
    assert len(shared.served) >= 20, shared.statuses  # enough answers to mean something
    assert _check_served(shared) == []
    assert _check_store(root, shared) == []


def test_a_version_deleted_before_its_load_is_a_clean_404(
    service: tuple[str, Path], files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the load after a DELETE answered 503 adapter_corrupted with the store path."""
    url, root = service
    shared = Shared(url=url, files=files)
    with httpx.Client(base_url=url, timeout=30) as http:
        _upload(http, shared, "alpha")
        # The request resolved v1 (as a predict queued before the DELETE has), then v1 goes.
        AdapterStore(root).delete("alpha", 1)
        for name, version in (("alpha", 1), ("alpha", None)):
            query = f"?version={version}" if version else ""
            response = http.post(f"/v1/adapters/{name}/predict{query}", json={"inputs": ["x"]})
            assert response.status_code == 404, response.text
            assert str(root) not in response.text
        _upload(http, shared, "alpha")
        listed = http.get("/v1/adapters").json()["data"]
        assert [(a["name"], a["latest_version"]) for a in listed] == [("alpha", 2)]


def test_load_after_resolve_then_delete_is_404_in_the_runtime(
    tmp_path: Path,
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    files: dict[str, bytes],
) -> None:
    from app.errors import SwitchyardError
    from app.registry.catalog import Registry
    from app.runtime.metrics import Metrics
    from app.runtime.runtime import Runtime

    settings = Settings(store=tmp_path / "store", _env_file=None)
    base = tiny_base(tiny_bert_dir, tokenizer)
    registry = Registry(AdapterStore(settings.store), base, settings)
    runtime = Runtime(base, registry, settings, Metrics())
    weights = _weights_of(1, files)
    for _ in range(2):
        registry.register(
            "alpha",
            config_bytes=weights["adapter_config.json"],
            weights_bytes=weights["adapter_model.safetensors"],
            task="classification",
            labels=_labels_of(1),
        )
    held = runtime.cache.acquire("alpha", 1)  # a batch in flight holds v1
    assert runtime.delete_adapter("alpha") == [1, 2]
    assert held.slot > 0 and held.refs == 1  # it keeps its copy until it is done
    runtime.cache.release(held)
    for version, code in ((1, "adapter_not_found"), (2, "adapter_not_found")):
        with pytest.raises(SwitchyardError) as info:
            runtime.cache.acquire("alpha", version)
        assert (info.value.status, info.value.code) == (404, code)
    with pytest.raises(SwitchyardError) as info:
        runtime.pin_adapter("alpha", True)
    assert info.value.status == 404


def test_concurrent_deletes_of_one_name_one_200_the_rest_404(
    service: tuple[str, Path], files: dict[str, bytes]
) -> None:
    """Regression: three concurrent DELETEs gave two 500s and an incomplete deleted_versions."""
    url, _root = service
    shared = Shared(url=url, files=files)
    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(3):
            _upload(http, shared, "beta")
    barrier = threading.Barrier(4)
    answers: list[tuple[int, Any]] = []

    def delete() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            barrier.wait()
            response = http.delete("/v1/adapters/beta")
            answers.append((response.status_code, response.json()))

    threads = [threading.Thread(target=delete) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 404, 404, 404], answers
    ok = next(body for status, body in answers if status == 200)
    assert ok == {"name": "beta", "deleted_versions": [1, 2, 3]}
    assert all(
        body["error"]["code"] == "adapter_not_found" for status, body in answers if status == 404
    )
