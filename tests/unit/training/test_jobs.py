"""The job manager with a fake trainer: validation, lifecycle, cancel, restart, shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.db import Database, open_database
from app.errors import SwitchyardError
from app.registry.store import CONFIG_FILE, WEIGHTS_FILE
from app.training.datasets import DatasetService
from app.training.jobs import JobManager
from app.training.rows import InvalidDatasetError
from app.training.types import (
    CancelToken,
    TrainingCancelled,
    TrainingOutcome,
    TrainingPlan,
    TrainingReporter,
)

EXAMPLES = [{"text": f"good {i}", "label": "pos"} for i in range(6)] + [
    {"text": f"bad {i}", "label": "neg"} for i in range(4)
]


class FakeTrainer:
    """Reports like the real trainer; can block until released or cancelled, or fail."""

    def __init__(self, *, steps: int = 4, block: bool = False, error: Exception | None = None):
        self.steps = steps
        self.block = block
        self.error = error
        self.plans: list[TrainingPlan] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(
        self, plan: TrainingPlan, *, reporter: TrainingReporter, cancel: CancelToken
    ) -> TrainingOutcome:
        self.plans.append(plan)
        self.started.set()
        for step in range(1, self.steps + 1):
            while self.block and not self.release.is_set() and not cancel.cancelled:
                time.sleep(0.005)
            if cancel.cancelled:
                raise TrainingCancelled(cancel.reason)
            reporter.progress(step=step, total_steps=self.steps, epoch=step / 2)
            reporter.event("loss", {"step": step, "loss": 1.0 / step})
        reporter.event("evaluation", {"step": self.steps, "accuracy": 0.75})
        if self.error is not None:
            raise self.error
        return TrainingOutcome(
            files={CONFIG_FILE: b'{"peft_type": "LORA"}', WEIGHTS_FILE: b"weights"},
            metrics={"accuracy": 0.75},
            history=[{"step": self.steps, "accuracy": 0.75}],
            best={"step": self.steps, "epoch": 2.0, "metric": "accuracy", "value": 0.75},
            hyperparameters={"epochs": 2, **plan.hyperparameters},
        )


class FakeRegistry:
    """Registry.register's signature; remembers what it was given."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def register(self, name: str, **kwargs: Any) -> int:
        self.calls.append({"name": name, **kwargs})
        return sum(1 for c in self.calls if c["name"] == name)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def cfg(tmp_path: Path) -> Settings:
    return Settings(store=tmp_path / "store", _env_file=None)


@pytest.fixture
def db(cfg: Settings) -> Iterator[Database]:
    database = open_database(cfg)
    yield database
    database.dispose()


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def make(
    db: Database, cfg: Settings, registry: FakeRegistry
) -> Iterator[Callable[..., JobManager]]:
    managers: list[JobManager] = []

    def build(
        trainer: FakeTrainer, *, start: bool = True, register_fn: Any = None, **kwargs: Any
    ) -> JobManager:
        manager = JobManager(
            db,
            DatasetService(db, cfg),
            cfg,
            train_fn=trainer,
            register_fn=register_fn or registry.register,
            poll_interval_s=0.02,
            progress_interval_s=0.0,
            **kwargs,
        )
        if start:
            manager.start()
        managers.append(manager)
        return manager

    yield build
    for manager in managers:
        manager.shutdown(timeout=2)


def status_of(manager: JobManager, job_id: str) -> str:
    return manager.get(job_id)["status"]


def finished(manager: JobManager, job_id: str) -> Callable[[], bool]:
    return lambda: status_of(manager, job_id) in ("succeeded", "failed", "cancelled")


# ---------------------------------------------------------------- success
def test_a_job_runs_and_registers_its_result(
    make: Callable[..., JobManager], registry: FakeRegistry
) -> None:
    trainer = FakeTrainer()
    manager = make(trainer)
    job = manager.create(
        {
            "adapter": "sst2",
            "task": "classification",
            "examples": EXAMPLES,
            "hyperparameters": {"epochs": 2},
        }
    )
    assert job["id"].startswith("job_") and job["status"] == "queued"
    assert job["labels"] == ["neg", "pos"] and job["hyperparameters"] == {"epochs": 2}
    assert job["progress"] == {
        "step": 0,
        "total_steps": None,
        "epoch": 0.0,
        "percent": 0.0,
        "eta_seconds": None,
    }
    wait_for(finished(manager, job["id"]))
    done = manager.get(job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["result"] == {"adapter": "sst2", "version": 1}
    assert done["progress"]["percent"] == 100.0 and done["progress"]["step"] == 4
    assert done["metrics"] == [{"step": 4, "accuracy": 0.75}]
    assert done["best"]["value"] == 0.75 and done["best"]["metrics"] == {"accuracy": 0.75}
    assert done["started_at"] and done["finished_at"] and done["error"] is None

    [call] = registry.calls
    assert (
        call["name"] == "sst2"
        and call["task"] == "classification"
        and call["labels"] == ["neg", "pos"]
    )
    assert call["config_bytes"] == b'{"peft_type": "LORA"}' and call["weights_bytes"] == b"weights"
    assert call["meta"]["lineage"] == {
        "source": "training",
        "job_id": job["id"],
        "training_data": None,
        "validation_data": None,
        "examples": 10,
    }
    assert call["meta"]["metrics"] == {"accuracy": 0.75}
    assert call["meta"]["hyperparameters"] == {"epochs": 2}


def test_the_plan_holds_out_a_stratified_split(make: Callable[..., JobManager]) -> None:
    trainer = FakeTrainer()
    manager = make(trainer)
    rows = [{"text": f"a{i}", "label": "a"} for i in range(30)] + [
        {"text": f"b{i}", "label": "b"} for i in range(10)
    ]
    job = manager.create({"adapter": "split", "examples": rows})
    assert job["task"] == "classification" and job["method"] == "auto"  # both defaulted
    assert job["rows"] == {"train": 36, "validation": 4, "validation_source": "held_out"}
    wait_for(finished(manager, job["id"]))
    plan = trainer.plans[0]
    assert sorted(r["label"] for r in plan.validation_rows) == ["a", "a", "a", "b"]
    assert len(plan.train_rows) == 36 and plan.labels == ["a", "b"]


def test_tiny_data_evaluates_on_the_training_rows(make: Callable[..., JobManager]) -> None:
    manager = make(FakeTrainer(), start=False)
    rows = [{"text": t, "label": t[0]} for t in ("x1", "x2", "y1", "y2")]
    job = manager.create({"adapter": "tiny", "examples": rows})
    assert job["rows"] == {"train": 4, "validation": 4, "validation_source": "training_rows"}


def test_a_class_with_one_row_is_named(make: Callable[..., JobManager]) -> None:
    manager = make(FakeTrainer(), start=False)
    with pytest.raises(SwitchyardError) as caught:
        manager.create({"adapter": "tiny", "examples": [*EXAMPLES, {"text": "m", "label": "meh"}]})
    error = caught.value
    assert (error.status, error.code, error.param) == (400, "too_few_rows", "examples")
    assert "'meh' (1)" in error.message


def test_datasets_are_used_for_training_and_validation(make: Callable[..., JobManager]) -> None:
    trainer = FakeTrainer()
    manager = make(trainer)
    train = manager.datasets.create("t.csv", b"text,label\na,1\nb,0\nc,1\ne,0\n")  # regression?
    val = manager.datasets.create("v.csv", b"text,label\nd,0\n")
    job = manager.create(
        {
            "adapter": "ids",
            "task": "classification",
            "training_data": train["id"],
            "validation_data": val["id"],
        }
    )
    assert job["training_data"] == train["id"] and job["labels"] == ["0", "1"]
    assert job["rows"] == {"train": 4, "validation": 1, "validation_source": "validation_data"}
    wait_for(finished(manager, job["id"]))
    assert trainer.plans[0].validation_rows == [{"text": "d", "label": "0"}]
    assert len(trainer.plans[0].train_rows) == 4


def test_jobs_run_in_submission_order(make: Callable[..., JobManager]) -> None:
    trainer = FakeTrainer(steps=1)
    manager = make(trainer, start=False)
    ids = [manager.create({"adapter": f"a{i}", "examples": EXAMPLES})["id"] for i in range(3)]
    manager.start()
    wait_for(lambda: all(finished(manager, i)() for i in ids))
    assert [p.adapter for p in trainer.plans] == ["a0", "a1", "a2"]
    assert [j["id"] for j in manager.list()] == ids[::-1]
    assert [j["id"] for j in manager.list(status="succeeded", limit=2)] == ids[:0:-1]


def test_events_log_status_losses_and_evaluations(make: Callable[..., JobManager]) -> None:
    manager = make(FakeTrainer(steps=2))
    job = manager.create({"adapter": "log", "examples": EXAMPLES})
    wait_for(finished(manager, job["id"]))
    events = manager.events(job["id"])
    kinds = [(e["kind"], e["data"].get("status")) for e in events]
    assert kinds == [
        ("status", "queued"),
        ("status", "validating"),
        ("status", "running"),
        ("loss", None),
        ("loss", None),
        ("evaluation", None),
        ("status", "succeeded"),
    ]
    assert events[-1]["data"]["result"] == {"adapter": "log", "version": 1}
    later = manager.events(job["id"], after_id=events[3]["id"])
    assert [e["id"] for e in later] == [e["id"] for e in events[4:]]


# ---------------------------------------------------------------- validation at submission
@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"adapter": "x"}, 400, "invalid_request", "training_data"),
        (
            {"adapter": "x", "examples": EXAMPLES, "training_data": "ds_1"},
            400,
            "invalid_request",
            "training_data",
        ),
        ({"adapter": "Bad Name", "examples": EXAMPLES}, 400, "invalid_name", "adapter"),
        ({"adapter": "x", "method": "full", "examples": EXAMPLES}, 400, "invalid_method", "method"),
        (
            {"adapter": "x", "task": "translation", "examples": EXAMPLES},
            400,
            "invalid_task",
            "task",
        ),
        ({"adapter": "x", "task": "embeddings", "examples": EXAMPLES}, 400, "invalid_task", "task"),
        (
            {"adapter": "x", "examples": [{"text": "a", "label": "only"}] * 3},
            400,
            "invalid_labels",
            "examples",
        ),
        ({"adapter": "x", "training_data": "ds_abc"}, 404, "dataset_not_found", "training_data"),
        (
            {"adapter": "x", "examples": EXAMPLES, "validation_data": "ds_abc"},
            404,
            "dataset_not_found",
            "validation_data",
        ),
    ],
)
def test_bad_jobs_are_rejected_at_once(
    make: Callable[..., JobManager], body: dict[str, Any], status: int, code: str, param: str
) -> None:
    manager = make(FakeTrainer(), start=False)
    with pytest.raises(SwitchyardError) as caught:
        manager.create(body)
    assert (caught.value.status, caught.value.code, caught.value.param) == (status, code, param)
    assert manager.list() == []


def test_bad_inline_rows_are_listed(make: Callable[..., JobManager]) -> None:
    manager = make(FakeTrainer(), start=False)
    rows = [*EXAMPLES, {"text": "", "label": "pos"}, {"text": "x", "label": 5.5}]
    with pytest.raises(InvalidDatasetError) as caught:
        manager.create({"adapter": "x", "task": "classification", "examples": rows})
    assert caught.value.details == [
        {"line": 11, "message": "text must be a non-empty string, got ''"}
    ]


def test_validation_labels_must_occur_in_training(make: Callable[..., JobManager]) -> None:
    manager = make(FakeTrainer(), start=False)
    val = manager.datasets.create("v.jsonl", b'{"text": "z", "label": "other"}\n')
    with pytest.raises(SwitchyardError) as caught:
        manager.create({"adapter": "x", "examples": EXAMPLES, "validation_data": val["id"]})
    assert (caught.value.code, caught.value.param) == ("label_mismatch", "validation_data")


def test_hyperparameter_check_runs_at_submission(make: Callable[..., JobManager]) -> None:
    def check(hp: dict[str, Any]) -> None:
        if hp.get("rank", 8) > 64:
            raise SwitchyardError(400, "invalid_hyperparameters", "rank too big", param="rank")

    manager = make(FakeTrainer(), start=False, check_hyperparameters=check)
    with pytest.raises(SwitchyardError) as caught:
        manager.create({"adapter": "x", "examples": EXAMPLES, "hyperparameters": {"rank": 512}})
    assert caught.value.param == "rank"


# ---------------------------------------------------------------- failures
def test_a_trainer_error_fails_the_job_with_its_code(
    make: Callable[..., JobManager], registry: FakeRegistry
) -> None:
    error = SwitchyardError(
        400, "invalid_hyperparameters", "learning_rate must be > 0", param="learning_rate"
    )
    manager = make(FakeTrainer(error=error))
    job = manager.create({"adapter": "x", "examples": EXAMPLES})
    wait_for(finished(manager, job["id"]))
    done = manager.get(job["id"])
    assert done["status"] == "failed" and done["result"] is None
    assert done["error"] == {
        "code": "invalid_hyperparameters",
        "message": "learning_rate must be > 0",
        "param": "learning_rate",
    }
    assert registry.calls == []


def test_an_unexpected_error_is_internal_and_the_worker_survives(
    make: Callable[..., JobManager],
) -> None:
    trainer = FakeTrainer(error=RuntimeError("CUDA out of memory"))
    manager = make(trainer)
    first = manager.create({"adapter": "x", "examples": EXAMPLES})
    wait_for(finished(manager, first["id"]))
    assert manager.get(first["id"])["error"]["code"] == "internal_error"
    assert "CUDA out of memory" in manager.get(first["id"])["error"]["message"]
    trainer.error = None
    second = manager.create({"adapter": "x", "examples": EXAMPLES})
    wait_for(finished(manager, second["id"]))
    assert status_of(manager, second["id"]) == "succeeded"


def test_a_registry_rejection_fails_the_job(make: Callable[..., JobManager]) -> None:
    def reject(name: str, **kwargs: Any) -> int:
        raise SwitchyardError(409, "base_mismatch", "wrong base", param="base_fingerprint")

    manager = make(FakeTrainer(), register_fn=reject)
    job = manager.create({"adapter": "x", "examples": EXAMPLES})
    wait_for(finished(manager, job["id"]))
    assert manager.get(job["id"])["error"]["code"] == "base_mismatch"


# ---------------------------------------------------------------- cancel
def test_cancel_a_queued_job_at_once(
    make: Callable[..., JobManager], registry: FakeRegistry
) -> None:
    trainer = FakeTrainer(block=True)
    manager = make(trainer)
    running = manager.create({"adapter": "first", "examples": EXAMPLES})
    assert trainer.started.wait(5)
    queued = manager.create({"adapter": "second", "examples": EXAMPLES})
    cancelled = manager.cancel(queued["id"])
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    assert manager.cancel(queued["id"])["status"] == "cancelled"  # idempotent
    trainer.release.set()
    wait_for(finished(manager, running["id"]))
    time.sleep(0.1)
    assert [p.adapter for p in trainer.plans] == ["first"]
    assert [c["name"] for c in registry.calls] == ["first"]


def test_cancel_a_running_job_registers_nothing(
    make: Callable[..., JobManager], registry: FakeRegistry
) -> None:
    trainer = FakeTrainer(block=True)
    manager = make(trainer)
    job = manager.create({"adapter": "x", "examples": EXAMPLES})
    assert trainer.started.wait(5)
    wait_for(lambda: status_of(manager, job["id"]) == "running")
    started = time.monotonic()
    result = manager.cancel(job["id"])
    assert result["status"] == "cancelled" and time.monotonic() - started < 3
    assert result["error"] is None and result["result"] is None
    assert registry.calls == []
    with pytest.raises(SwitchyardError) as caught:
        manager.cancel("job_unknown")
    assert caught.value.status == 404


def test_a_finished_job_cannot_be_cancelled(make: Callable[..., JobManager]) -> None:
    manager = make(FakeTrainer(steps=1))
    job = manager.create({"adapter": "x", "examples": EXAMPLES})
    wait_for(finished(manager, job["id"]))
    with pytest.raises(SwitchyardError) as caught:
        manager.cancel(job["id"])
    assert (caught.value.status, caught.value.code) == (409, "job_not_cancellable")


# ---------------------------------------------------------------- restart and shutdown
def test_restart_fails_interrupted_jobs_and_runs_queued_ones(
    make: Callable[..., JobManager], registry: FakeRegistry
) -> None:
    first = make(FakeTrainer(), start=False)
    ids = [first.create({"adapter": f"a{i}", "examples": EXAMPLES})["id"] for i in range(3)]
    # A crash left one job running and one validating; the third is still queued.
    assert first.records.transition(ids[0], "validating", expect=("queued",))
    assert first.records.transition(ids[0], "running", expect=("validating",))
    assert first.records.transition(ids[1], "validating", expect=("queued",))

    trainer = FakeTrainer()
    second = make(trainer)
    wait_for(finished(second, ids[2]))
    for job_id in ids[:2]:
        job = second.get(job_id)
        assert job["status"] == "failed" and job["error"]["code"] == "interrupted"
        assert "restarted" in job["error"]["message"]
    assert status_of(second, ids[2]) == "succeeded"
    assert [c["name"] for c in registry.calls] == ["a2"]


def test_shutdown_interrupts_running_jobs_and_keeps_queued_ones(
    make: Callable[..., JobManager], registry: FakeRegistry
) -> None:
    trainer = FakeTrainer(block=True)
    manager = make(trainer)
    running = manager.create({"adapter": "a", "examples": EXAMPLES})
    assert trainer.started.wait(5)
    queued = manager.create({"adapter": "b", "examples": EXAMPLES})
    manager.shutdown(timeout=5)
    job = manager.get(running["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "interrupted"
    assert "shut down" in job["error"]["message"]
    assert status_of(manager, queued["id"]) == "queued"
    assert registry.calls == []


# ---------------------------------------------------------------- progress
def test_progress_has_percent_and_eta(make: Callable[..., JobManager]) -> None:
    seen: list[dict[str, Any]] = []

    class Slow(FakeTrainer):
        def __call__(
            self, plan: TrainingPlan, *, reporter: TrainingReporter, cancel: CancelToken
        ) -> TrainingOutcome:
            for step in range(0, 3):
                reporter.progress(step=step, total_steps=10, epoch=step / 10)
                time.sleep(0.05)
                seen.append(manager.get(job_id)["progress"])
            return super().__call__(plan, reporter=reporter, cancel=cancel)

    manager = make(Slow(steps=1), start=False)
    job_id = manager.create({"adapter": "x", "examples": EXAMPLES})["id"]
    manager.start()
    wait_for(finished(manager, job_id))
    assert seen[0] == {
        "step": 0,
        "total_steps": 10,
        "epoch": 0.0,
        "percent": 0.0,
        "eta_seconds": None,
    }
    assert seen[2]["step"] == 2 and seen[2]["percent"] == 20.0
    assert 0.4 <= seen[2]["eta_seconds"] <= 5.0  # at least 0.05 s a step, 8 steps to go
