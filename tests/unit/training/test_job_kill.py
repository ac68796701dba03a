"""A training job killed at every phase leaves nothing half-registered.

The real trainer on the tiny base and the real registry and store; faults are injected through
the job manager's own seams (the trainer it calls, the reporter the trainer reports to, the
register function) and, for a crash, by killing a worker process in the middle of writing a
version. Whatever the phase, the job ends `failed` or `cancelled` with the right code, and the
store holds no version and no partial file; a cancel that comes once the version is stored is
too late by contract, and then the job succeeds with exactly that version.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.base import FrozenBase
from app.config import Settings
from app.db import Database, open_database
from app.errors import SwitchyardError
from app.registry.catalog import Registry
from app.registry.store import AdapterStore
from app.training.datasets import DatasetService
from app.training.jobs import JobManager
from app.training.preflight import preflight
from app.training.trainer import train
from app.training.types import CancelToken, TrainingOutcome, TrainingPlan, TrainingReporter
from tests.unit.training.test_jobs import EXAMPLES, finished, wait_for

FAST = {"max_steps": 3, "head_init": "random", "epochs": 1, "eval_every_steps": 2}
PHASES = ("validating", "planning", "training", "evaluating", "saving", "registering")


class Injected(RuntimeError):
    """The fault a test injects: no user value, so a failed job must call it a bug."""


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = open_database(settings)
    yield database
    database.dispose()


@pytest.fixture
def store(settings: Settings) -> AdapterStore:
    return AdapterStore(settings.store)


class Faults:
    """Wraps the manager's seams; at `phase` it cancels the job (through the manager, as a
    user would) or raises `Injected`."""

    def __init__(self, base: FrozenBase, registry: Registry, *, phase: str, action: str) -> None:
        self.phase, self.action = phase, action
        self.manager: JobManager | None = None
        self.job_id = ""
        self.fired = threading.Event()
        self._train = functools.partial(train, base=base, max_rank=64, max_tokens=512)
        self._register = registry.register

    def hit(self, phase: str, cancel: CancelToken | None = None) -> None:
        if phase != self.phase or self.fired.is_set():
            return
        self.fired.set()
        if self.action == "raise":
            raise Injected(f"injected at {phase}")
        assert self.manager is not None
        if cancel is not None:
            cancel.cancel("cancelled")  # what manager.cancel does to a running job's token
        threading.Thread(target=self.manager.cancel, args=(self.job_id,)).start()
        if cancel is not None:
            wait_for(lambda: cancel.cancelled)

    def train_fn(
        self, plan: TrainingPlan, *, reporter: TrainingReporter, cancel: CancelToken
    ) -> TrainingOutcome:
        self.hit("planning", cancel)
        outcome = self._train(plan, reporter=Reporter(self, reporter, cancel), cancel=cancel)
        self.hit("saving", cancel)
        return outcome

    def register_fn(self, name: str, **kwargs: Any) -> int:
        self.hit("registering")
        return self._register(name, **kwargs)


class Reporter:
    """The job's reporter, with a fault at the first loss (training) or evaluation."""

    def __init__(self, faults: Faults, inner: TrainingReporter, cancel: CancelToken) -> None:
        self.faults, self.inner, self.cancel = faults, inner, cancel

    def progress(self, *, step: int, total_steps: int, epoch: float) -> None:
        self.faults.hit("training", self.cancel)
        self.inner.progress(step=step, total_steps=total_steps, epoch=epoch)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "evaluation":
            self.faults.hit("evaluating", self.cancel)
        self.inner.event(kind, data)


def leftovers(store: AdapterStore) -> list[str]:
    """Every file in the store that is not the catalog or a dataset (versions, partial
    writes), and any temp or trash folder. (An emptied name folder holds nothing and lists
    nothing: the store's sweep leaves it.)"""
    found = []
    for path in store.root.rglob("*"):
        rel = path.relative_to(store.root).as_posix()
        if rel.startswith("switchyard.db") or rel == "_datasets":
            continue
        if path.is_dir() and not path.name.startswith((".tmp-", ".trash-")):
            continue
        if rel.startswith("_datasets/") and path.name.startswith("ds_"):
            continue
        found.append(rel)
    return found


def build(
    db: Database, settings: Settings, base: FrozenBase, faults: Faults, registry: Registry
) -> JobManager:
    datasets = DatasetService(db, settings)
    real_load = datasets.load_rows
    calls = 0

    def load_rows(dataset_id: str, *, param: str = "id") -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        if calls > 1:  # the worker's replay of the plan: the job is validating
            faults.hit("validating")
            if faults.fired.is_set() and faults.action == "cancel":
                # Until the cancel reached the job's token (what the worker checks next).
                wait_for(lambda: manager._tokens[faults.job_id].cancelled)
        return real_load(dataset_id, param=param)

    datasets.load_rows = load_rows  # type: ignore[method-assign]
    manager = JobManager(
        db,
        datasets,
        settings,
        train_fn=faults.train_fn,
        register_fn=faults.register_fn,
        check_plan=functools.partial(preflight, base=base, max_rank=64, max_tokens=512),
        poll_interval_s=0.02,
        progress_interval_s=0.0,
    )
    faults.manager = manager
    return manager


@pytest.mark.parametrize("action", ["cancel", "raise"])
@pytest.mark.parametrize("phase", PHASES)
def test_a_job_stopped_at_any_phase_leaves_nothing_half_registered(
    db: Database,
    settings: Settings,
    tiny_base: FrozenBase,
    store: AdapterStore,
    phase: str,
    action: str,
) -> None:
    registry = Registry(store, tiny_base, settings)
    faults = Faults(tiny_base, registry, phase=phase, action=action)
    manager = build(db, settings, tiny_base, faults, registry)
    dataset = manager.datasets.create(
        "d.jsonl", "".join(json.dumps(r) + "\n" for r in EXAMPLES).encode()
    )
    manager.start()
    try:
        faults.job_id = manager.create(
            {"adapter": "killed", "training_data": dataset["id"], "hyperparameters": FAST}
        )["id"]
        wait_for(finished(manager, faults.job_id), timeout=120)
        wait_for(
            lambda: manager.get(faults.job_id)["status"] in ("succeeded", "failed", "cancelled")
        )
    finally:
        manager.shutdown(timeout=10)
    assert faults.fired.is_set(), f"the fault at {phase} never fired"
    job = manager.get(faults.job_id)
    if action == "cancel" and phase == "registering":
        # Too late by contract: the version is stored whole and the job says so.
        assert job["status"] == "succeeded" and job["result"]["version"] == 1
        assert store.versions("killed") == [1]
        assert sorted(p.name for p in store.version_dir("killed", 1).iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
            "switchyard.json",
        ]
        return
    if action == "cancel":
        assert job["status"] == "cancelled" and job["error"] is None, job
    else:
        assert job["status"] == "failed"
        assert job["error"]["code"] == "internal_error" and "Injected" in job["error"]["message"]
    assert job["result"] is None
    assert leftovers(store) == []


def test_a_full_disk_while_writing_the_version_leaves_nothing(
    db: Database,
    settings: Settings,
    tiny_base: FrozenBase,
    store: AdapterStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import app.registry.store as store_module

    real_write = store_module._write_synced
    writes = 0

    def write(path: Path, data: bytes) -> None:
        nonlocal writes
        writes += 1
        if writes == 2:
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(store_module, "_write_synced", write)
    registry = Registry(store, tiny_base, settings)
    faults = Faults(tiny_base, registry, phase="none", action="raise")
    manager = build(db, settings, tiny_base, faults, registry)
    manager.start()
    try:
        job = manager.create({"adapter": "full", "examples": EXAMPLES, "hyperparameters": FAST})
        wait_for(finished(manager, job["id"]), timeout=120)
    finally:
        manager.shutdown(timeout=10)
    done = manager.get(job["id"])
    assert done["status"] == "failed" and done["result"] is None
    assert writes == 2 and leftovers(store) == []


CRASHING_WORKER = textwrap.dedent("""
    import functools, os, sys, torch
    from pathlib import Path
    from transformers import AutoTokenizer, BertModel
    import app.registry.store as store_module
    from app.base import wrap_base
    from app.config import Settings
    from app.db import open_database
    from app.registry.catalog import Registry
    from app.training.datasets import DatasetService
    from app.training.jobs import JobManager
    from app.training.trainer import train

    base_dir, store_dir, body = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    real_write = store_module._write_synced

    def write_then_die(path, data):  # the power goes out after the first file of the version
        real_write(path, data)
        os._exit(137)

    store_module._write_synced = write_then_die
    base = wrap_base(BertModel.from_pretrained(base_dir), AutoTokenizer.from_pretrained(base_dir),
                     name="tiny", path=base_dir, device=torch.device("cpu"))
    settings = Settings(store=store_dir, _env_file=None)
    db = open_database(settings)
    registry = Registry(store_module.AdapterStore(store_dir), base, settings)
    jobs = JobManager(db, DatasetService(db, settings), settings,
                      train_fn=functools.partial(train, base=base, max_rank=64, max_tokens=512),
                      register_fn=registry.register, poll_interval_s=0.02)
    import json
    jobs.create(json.loads(body))
    jobs.start()
    import time
    time.sleep(300)
    os._exit(1)  # never reached: the write kills the process
""")


def test_a_restart_after_a_crash_mid_write_interrupts_the_job_and_cleans_the_store(
    tiny_bert_dir: Path, settings: Settings, tiny_base: FrozenBase
) -> None:
    body = json.dumps({"adapter": "crash", "examples": EXAMPLES, "hyperparameters": FAST})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_WORKER, str(tiny_bert_dir), str(settings.store), body],
        env=env,
        cwd=Path(__file__).resolve().parents[3],
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 137, done.stderr.decode()[-2000:]
    store = AdapterStore(settings.store)
    assert any(".tmp-" in p for p in leftovers(store))  # the crash left a partial version

    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings, base=tiny_base)) as client:  # the restart
        [job] = client.get("/v1/training-jobs").json()["data"]
        assert job["status"] == "failed" and job["error"]["code"] == "interrupted"
        assert client.get("/v1/adapters").json()["data"] == []
    assert leftovers(store) == []


def test_an_error_is_internal_only_when_no_user_value_explains_it(
    db: Database, settings: Settings
) -> None:
    from app.training.job_records import failure

    user = SwitchyardError(
        400, "invalid_hyperparameter", "rank 65 > max_rank 64", param="hyperparameters.rank"
    )
    assert failure(user, "j")["code"] == "invalid_hyperparameter"
    assert failure(MemoryError(), "j")["code"] == "out_of_memory"
    assert failure(Injected("bug"), "j")["code"] == "internal_error"
