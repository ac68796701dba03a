"""The trainer: a Ray Serve deployment of its own, with its own resource request, leasing
training jobs from the shared queue while the runtime replicas only serve.

It is not co-located with a runtime replica's base: a Ray actor is its own process, and torch
tensors are not shared across processes here, so the trainer loads its own copy of the frozen
base (MiniLM: ~90 MB of weights; README "Scale-out" has the measured RSS). It runs the whole
Switchyard app in-process, lifespan started at construction, so its training workers are the
single-process service's (leases, heartbeat, `SWITCHYARD_MAX_CONCURRENT_JOBS` per node); it
answers no HTTP. Killing it stops the heartbeat: the job fails `interrupted` when the lease
expires, and Ray starts a new trainer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from typing import Any

from ray import serve

from app.config import Settings
from app.main import create_app
from app.scaleout.forwarding import InProcessApp

log = logging.getLogger(__name__)

TRAINER_CPUS = 1.0


def trainer_options(settings: Settings) -> dict[str, Any]:
    """The trainer's Ray resource request: one CPU, and one GPU when the settings ask for one
    (`SWITCHYARD_DEVICE=cuda...`; `auto` stays on CPU, as the head node may have none)."""
    options: dict[str, Any] = {"num_cpus": TRAINER_CPUS}
    if settings.device.startswith("cuda"):
        options["num_gpus"] = 1
    return options


@serve.deployment(num_replicas=1, max_ongoing_requests=4)
class Trainer:
    """One trainer process: the app's training workers, on a base copy of its own."""

    def __init__(self, settings_json: str) -> None:
        # Serve runs __init__ synchronously and calls nothing on this deployment: the app's
        # async start-up runs on a loop of its own, for the life of the process.
        settings = Settings(**json.loads(settings_json), _env_file=None)
        self.inner = InProcessApp(
            create_app(settings.model_copy(update={"train_in_process": True}))
        )
        self._loop = asyncio.new_event_loop()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="trainer-app", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self.inner.start())
            log.info("trainer %d started: leasing jobs from the shared queue", os.getpid())
            self._loop.run_forever()
        except BaseException as exc:  # reported by check_health: Ray then replaces the trainer
            log.exception("trainer start-up failed")
            self._failed = exc

    def check_health(self) -> None:
        """Ray's health check: a trainer whose app failed to start is replaced."""
        if self._failed is not None:
            raise RuntimeError(f"the trainer's app failed: {self._failed!r}") from self._failed
