"""`switchyard serve --replicas N`: a local Ray cluster running Switchyard until a signal."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from app.config import Settings


def serve_on_ray(settings: Settings, *, replicas: int) -> int:
    """Start Ray and the Serve application, wait for SIGTERM or SIGINT, then stop both.

    Returns the process's exit code: 3 when Ray is not installed (the `ray` extra).
    """
    try:
        import ray
        from ray import serve

        from app.scaleout.serve import start_cluster
    except ImportError as exc:
        print(
            f"switchyard: --replicas needs Ray Serve ({exc.name} is missing): "
            "pip install -e '.[ray]'",
            file=sys.stderr,
        )
        return 3
    stop = threading.Event()

    def on_signal(_sig: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    start_cluster(settings, replicas=replicas)
    try:
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
