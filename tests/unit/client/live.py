"""A real HTTP service on the tiny base: uvicorn on a free port in a thread, for the client and
CLI tests (they speak HTTP over a socket, as users do, not through an ASGI shortcut)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch
import uvicorn
from transformers import BertModel, PreTrainedTokenizerBase

from app.base import FrozenBase, wrap_base
from app.config import Settings
from app.main import create_app


def tiny_base(folder: Path, tokenizer: PreTrainedTokenizerBase) -> FrozenBase:
    """A frozen tiny base from tests/conftest.py's saved tiny BERT."""
    model = BertModel.from_pretrained(folder)
    return wrap_base(model, tokenizer, name="tiny-bert", path=folder, device=torch.device("cpu"))


@contextmanager
def live_service(settings: Settings, base: FrozenBase, *, timeout: float = 60) -> Iterator[str]:
    """Serve `create_app(settings, base=base)` until the block ends; yields its URL once ready."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, base=base), log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, thread, timeout)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def _wait_ready(url: str, thread: threading.Thread, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("the service thread exited during start-up")
        try:
            if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"service at {url} not ready within {timeout} s")


def job_rows(count: int = 24) -> list[dict[str, str]]:
    """Separable two-label rows: a tiny job learns them in a few steps."""
    good, bad = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "sad"]
    return [
        {"text": f"{(good if i % 2 else bad)[i % 4]} film {i}", "label": "pos" if i % 2 else "neg"}
        for i in range(count)
    ]


# Four steps of batch 8, an evaluation after each: a second or two on the tiny base.
TINY_HP = {
    "epochs": 1,
    "batch_size": 8,
    "max_steps": 4,
    "eval_every_steps": 1,
    "log_every_steps": 1,
    "head_init": "random",
    "early_stopping_patience": None,
}
# Long enough to still run when the test cancels it.
LONG_HP = {**TINY_HP, "max_steps": 5000, "epochs": 100}
