"""Helpers of the browser tests: the app under uvicorn in a thread, and screenshots.

One module that both the conftest and the tests import, so that the list of saved
screenshots is one list (a conftest can be imported under two names).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.config import Settings

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SAVED: list[Path] = []


def screenshot(page: Any, name: str) -> Path:
    """A full-page PNG under tests/artifacts/, listed in the terminal summary."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SAVED.append(path)
    print(f"screenshot: {path}")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Live:
    """A running service: where it listens and an HTTP client for setting up state."""

    url: str
    http: httpx.Client
    stop: Callable[[], None] = field(repr=False)


def serve(settings: Settings, base: Any) -> Live:
    """The whole app (create_app) under uvicorn on a free loopback port, in a thread."""
    import uvicorn

    from app.main import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(settings, base=base), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the service did not start")
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, timeout=30)

    def stop() -> None:
        http.close()
        server.should_exit = True
        thread.join(timeout=30)

    return Live(url=url, http=http, stop=stop)
