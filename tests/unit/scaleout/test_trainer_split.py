"""Serving and training apart: an app with `train_in_process` off (a Ray runtime replica)
accepts jobs but leaves them queued for the trainer, and the trainer's Ray resource request
follows the device."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.base import FrozenBase
from app.config import Settings
from app.main import create_app

EXAMPLES = [{"text": f"good {i}", "label": "pos"} for i in range(4)] + [
    {"text": f"bad {i}", "label": "neg"} for i in range(4)
]
FAST_JOB = {"max_steps": 2, "head_init": "random", "epochs": 1}


def _job_status(tmp_path: Path, tiny_base: FrozenBase, *, train_in_process: bool) -> str:
    settings = Settings(store=tmp_path / "store", train_in_process=train_in_process, _env_file=None)
    with TestClient(create_app(settings, base=tiny_base)) as client:
        body = {"adapter": "split", "examples": EXAMPLES, "hyperparameters": FAST_JOB}
        created = client.post("/v1/training-jobs", json=body)
        assert created.status_code == 202, created.text
        url = f"/v1/training-jobs/{created.json()['id']}"
        # Trained, it may take a while on a loaded box; left queued, 10 s is many 1 s polls.
        deadline = time.monotonic() + (120 if train_in_process else 10)
        while (status := client.get(url).json()["status"]) not in ("succeeded", "failed"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return str(status)


@pytest.mark.parametrize(("train_in_process", "status"), [(True, "succeeded"), (False, "queued")])
def test_a_serving_only_app_leaves_jobs_to_the_trainer(
    tmp_path: Path, tiny_base: FrozenBase, train_in_process: bool, status: str
) -> None:
    # The same job with the workers on and off: on, it trains within the wait; off, no one in
    # the process claims it (workers poll every 1 s: the wait is many polls).
    assert _job_status(tmp_path, tiny_base, train_in_process=train_in_process) == status


def test_the_trainer_asks_ray_for_a_cpu_or_a_gpu(tmp_path: Path) -> None:
    pytest.importorskip("ray.serve", reason="the `ray` extra is not installed")
    from app.scaleout.trainer import TRAINER_CPUS, trainer_options

    cpu = Settings(store=tmp_path, _env_file=None)
    assert trainer_options(cpu) == {"num_cpus": TRAINER_CPUS}
    gpu = Settings(store=tmp_path, device="cuda:0", _env_file=None)
    assert trainer_options(gpu) == {"num_cpus": TRAINER_CPUS, "num_gpus": 1}
