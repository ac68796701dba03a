"""Request-path overhead: single-input predict p50 over HTTP vs the bare forward of that input.

The service (uvicorn + FastAPI + the real MiniLM base) runs in a thread of THIS process, so the
bare forward is timed on the very same model object, torch threads and CPU share; requests are
sequential (one client), the two measurements alternate, and the ratio of medians is printed.
Two references: the bare base forward (no adapter) and the same forward with the adapter's
slot routed (what the request's forward itself costs); the second isolates the request path.
Target: HTTP p50 / bare forward p50 <= 1.3x (issue 15).

The client shares this process (and its GIL) with the server, so its own Python work counts
against the service: httpx costs about 1 ms a request here. The headline uses a bare keep-alive
`http.client` connection, the least a client can do; the httpx figure is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from functools import partial
from http.client import HTTPConnection

import httpx
import torch
import uvicorn

from app.base import load_base
from app.config import Settings
from app.main import create_app
from bench._common import base_dir, make_lora_files, p50, tempdir
from tests.integration.conftest import free_port

TEXT = "an intelligent, moving and beautifully acted film about growing old"
_JSON = {"Content-Type": "application/json"}


def _serve(settings: Settings) -> tuple[uvicorn.Server, object]:
    base = load_base(settings)
    app = create_app(settings, base=base)
    server = uvicorn.Server(uvicorn.Config(app, port=settings.port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{settings.port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health/ready").status_code == 200:
                return server, app
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    work = tempdir()
    settings = Settings(store=work / "store", port=free_port(), _env_file=None)
    server, app = _serve(settings)
    files = make_lora_files(base_dir(), work / "peft", seed=0)
    http = httpx.Client(base_url=f"http://127.0.0.1:{settings.port}", timeout=60)
    http.post(
        "/v1/adapters",
        data={"name": "a0", "labels": json.dumps(["a", "b"])},
        files={k: (k, v) for k, v in files.items()},
    ).raise_for_status()
    runtime = app.state.runtime  # type: ignore[attr-defined]
    model, layers = runtime.base.model, runtime.layers
    inputs = dict(runtime.base.tokenizer(TEXT, return_tensors="pt"))

    def forward(slot: int | None) -> None:
        with torch.inference_mode():
            if slot is not None:
                layers.route([slot], runtime.base.device)
            model(**inputs)
            layers.clear_route()

    def predict() -> None:
        http.post("/v1/adapters/a0/predict", json={"inputs": [TEXT]}).raise_for_status()

    raw = HTTPConnection("127.0.0.1", settings.port, timeout=60)
    predict_raw = partial(_raw_predict, raw)

    predict()  # loads the adapter into a slot
    slot = runtime.cache.acquire("a0", 1)
    runtime.cache.release(slot)
    predict_raw()
    bare, routed, served, served_httpx = [], [], [], []
    for _ in range(args.requests):
        bare.append(_timed(lambda: forward(None)))
        routed.append(_timed(lambda: forward(slot.slot)))
        served.append(_timed(predict_raw))
        served_httpx.append(_timed(predict))
    http.close()
    raw.close()
    server.should_exit = True
    _report(bare, routed, served, served_httpx, threads=torch.get_num_threads())


def _raw_predict(raw: HTTPConnection) -> None:
    """One predict over a kept-alive `http.client` connection: the least a client can do."""
    body = json.dumps({"inputs": [TEXT]}).encode()
    raw.request("POST", "/v1/adapters/a0/predict", body=body, headers=_JSON)
    response = raw.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"predict answered {response.status}")


def _report(
    bare: list[float],
    routed: list[float],
    served: list[float],
    served_httpx: list[float],
    *,
    threads: int,
) -> None:
    print(f"{len(served)} sequential single-input requests, {threads} torch threads")
    print(f"bare base forward:          p50 {1000 * p50(bare):.2f} ms")
    print(f"forward with adapter slot:  p50 {1000 * p50(routed):.2f} ms")
    print(f"HTTP predict (adapter):     p50 {1000 * p50(served):.2f} ms (http.client)")
    print(f"HTTP predict, httpx client: p50 {1000 * p50(served_httpx):.2f} ms")
    print(f"ratio HTTP / bare forward:  {p50(served) / p50(bare):.2f}x (target <= 1.3x)")
    print(f"ratio HTTP / adapter forward: {p50(served) / p50(routed):.2f}x (request path alone)")
    print(f"with the httpx client:      {p50(served_httpx) / p50(bare):.2f}x the bare forward")


if __name__ == "__main__":
    main()
