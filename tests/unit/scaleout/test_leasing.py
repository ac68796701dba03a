"""Training jobs leased from the shared queue, on SQLite and PostgreSQL: one job to one node,
at most N live leases a node, a heartbeat that keeps a lease, expiry that fails a dead node's
job as `interrupted` (a SIGKILLed process included), and a start that leaves live jobs alone."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, update

from app.config import Settings
from app.db import Database, JobLease, TrainingJob, utcnow
from app.scaleout.leasing import LeasedJobRecords, LeaseTerms, leased_records
from app.training.datasets import DatasetService
from app.training.jobs import RESTART_MESSAGE, JobManager
from tests.unit.training.test_jobs import FakeRegistry, FakeTrainer, wait_for

DATASET = b'{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n' * 3


def _queue(db: Database, count: int, status: str = "queued") -> list[str]:
    ids = [f"job_{i:02d}" for i in range(count)]
    start = utcnow()
    with db.session() as session:
        for i, job_id in enumerate(ids):
            session.add(
                TrainingJob(
                    id=job_id,
                    adapter="a",
                    task="classification",
                    method="lora",
                    status=status,
                    request={},
                    created_at=start + dt.timedelta(milliseconds=i),
                )
            )
    return ids


def _records(db: Database, node: str, **terms: float) -> LeasedJobRecords:
    return LeasedJobRecords(db, LeaseTerms(node=node, **terms))  # type: ignore[arg-type]


def _expire(db: Database, job_id: str) -> None:
    """As if the node holding it stopped renewing long ago."""
    with db.session() as session:
        past = utcnow() - dt.timedelta(seconds=60)
        session.execute(update(JobLease).where(JobLease.job_id == job_id).values(expires_at=past))


def test_a_node_leases_oldest_first_up_to_its_limit(catalog: Database) -> None:
    ids = _queue(catalog, 4)
    node_a = _records(catalog, "a", max_per_node=2)
    node_b = _records(catalog, "b", max_per_node=1)
    first, second = node_a.claim_next(), node_a.claim_next()
    assert first is not None and second is not None
    assert [first.id, second.id] == ids[:2] and first.status == "validating"
    assert node_a.claim_next() is None  # at its limit, with jobs still queued
    third = node_b.claim_next()
    assert third is not None and third.id == ids[2] and node_b.claim_next() is None
    assert node_a.live_leases() == 2 and node_b.live_leases() == 1
    node_a.transition(first.id, "succeeded", expect=("validating",))
    with catalog.session() as session:
        assert session.get(JobLease, first.id) is None  # a finished job gives its lease back
    fourth = node_a.claim_next()
    assert fourth is not None and fourth.id == ids[3]
    for records, job in ((node_a, second), (node_b, third), (node_a, fourth)):
        records.transition(job.id, "cancelled", expect=("validating",))


def test_a_finished_job_gives_its_lease_back_in_the_same_commit(catalog: Database) -> None:
    # A reader between two commits saw the job succeeded with its lease still held (CI, stop 24).
    (job_id,) = _queue(catalog, 1)
    node = _records(catalog, "a")
    assert node.claim_next() is not None
    steps: list[str] = []

    def statement(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        words = sql.split()
        if words[0] in ("UPDATE", "DELETE"):
            steps.append(f"{words[0]} {words[2] if words[0] == 'DELETE' else words[1]}")

    def commit(_conn: Any) -> None:
        steps.append("COMMIT")

    event.listen(catalog.engine, "before_cursor_execute", statement)
    event.listen(catalog.engine, "commit", commit)
    try:
        assert node.transition(job_id, "succeeded", expect=("validating",))
    finally:
        event.remove(catalog.engine, "before_cursor_execute", statement)
        event.remove(catalog.engine, "commit", commit)
    finished = steps.index("UPDATE training_jobs")
    assert "DELETE job_leases" in steps[finished : steps.index("COMMIT", finished)]


def test_a_cancel_that_loses_to_a_claim_leaves_the_lease_alone(catalog: Database) -> None:
    (job_id,) = _queue(catalog, 1)
    holder = _records(catalog, "a", lease_s=2.0, heartbeat_s=0.1)
    assert holder.claim_next() is not None
    # The API read `queued` just before the claim: its conditional cancel must change nothing.
    assert not holder.transition(job_id, "cancelled", expect=("queued",))
    time.sleep(3.0)  # past the lease: only a heartbeat still running keeps it
    watcher = _records(catalog, "b")
    assert watcher.reap_expired() == [] and watcher.status(job_id) == "validating"
    assert holder.live_leases() == 1
    assert holder.transition(job_id, "cancelled", expect=("validating",))
    assert holder.live_leases() == 0


def test_a_node_counts_its_leases_and_takes_one_in_a_single_step(catalog: Database) -> None:
    """Two threads of a node at its limit of 1: the first is held right after counting; the
    second must wait for it (the node's lock), not count the same free place and lease too."""
    _queue(catalog, 2)
    node = _records(catalog, "a", max_per_node=1)
    counted, go = threading.Event(), threading.Event()

    def hold_after_count(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        if threading.current_thread().name == "first" and "count(" in sql.lower():
            counted.set()
            go.wait(10)

    taken: dict[str, str | None] = {}

    def claim() -> None:
        job = node.claim_next()
        taken[threading.current_thread().name] = job.id if job else None

    event.listen(catalog.engine, "after_cursor_execute", hold_after_count)
    try:
        first = threading.Thread(target=claim, name="first")
        first.start()
        assert counted.wait(10)
        second = threading.Thread(target=claim, name="second")
        second.start()
        second.join(1.0)  # unlocked, it would have counted 0 and leased by now
        go.set()
        first.join(10)
        second.join(10)
    finally:
        go.set()
        event.remove(catalog.engine, "after_cursor_execute", hold_after_count)
    assert node.live_leases() == 1
    assert taken["first"] is not None and taken["second"] is None


def test_nodes_polling_at_once_never_take_one_job_twice(catalog: Database) -> None:
    ids = _queue(catalog, 6)
    nodes = [_records(catalog, name, max_per_node=3) for name in ("a", "b", "c")]
    start = threading.Barrier(6)

    def poll(records: LeasedJobRecords) -> list[str]:
        start.wait()
        taken = []
        for _ in range(4):
            job = records.claim_next()
            if job is not None:
                taken.append(job.id)
        return taken

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(poll, nodes + nodes))
    taken = [job_id for result in results for job_id in result]
    assert sorted(taken) == ids  # every job once, none twice
    for records in nodes:
        assert records.live_leases() <= 3
        for job_id in ids:
            records.transition(job_id, "cancelled", expect=("validating",))


def test_a_heartbeat_keeps_a_lease_past_its_length(catalog: Database) -> None:
    _queue(catalog, 1)
    holder = _records(catalog, "a", lease_s=2.0, heartbeat_s=0.1)
    job = holder.claim_next()
    assert job is not None
    time.sleep(3.0)  # a loaded box may stall a beat, so the lease spans many of them
    watcher = _records(catalog, "b")
    assert watcher.reap_expired() == []
    assert watcher.status(job.id) == "validating"
    holder.transition(job.id, "cancelled", expect=("validating",))


def test_an_expired_lease_fails_its_job_as_interrupted(catalog: Database) -> None:
    ids = _queue(catalog, 2)
    dead = _records(catalog, "dead", lease_s=30, heartbeat_s=10)
    job = dead.claim_next()
    assert job is not None and job.id == ids[0]
    _expire(catalog, job.id)
    assert dead.renew(job.id)  # renewing an expired but unreaped lease still works...
    _expire(catalog, job.id)
    other = _records(catalog, "b")
    taken = other.claim_next()  # ...until someone polls: then the job is failed and lost
    assert taken is not None and taken.id == ids[1]
    failed = other.get(job.id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error["code"] == "interrupted"
    assert not dead.renew(job.id)
    with catalog.session() as session:
        assert session.scalars(select(JobLease.job_id)).all() == [ids[1]]
    other.transition(ids[1], "cancelled", expect=("validating",))


def test_a_start_interrupts_only_jobs_without_a_live_lease(catalog: Database) -> None:
    ids = _queue(catalog, 2)
    live = _records(catalog, "live")
    job = live.claim_next()
    assert job is not None
    with catalog.session() as session:  # a job some crashed process left running, unleased
        session.execute(
            update(TrainingJob).where(TrainingJob.id == ids[1]).values(status="running")
        )
    starting = _records(catalog, "starting")
    assert starting.interrupt(RESTART_MESSAGE) == [ids[1]]
    assert starting.status(job.id) == "validating"
    assert starting.interrupt("shutdown", [job.id]) == [job.id]  # named jobs fail as before


def _lease_then_hang(url: str, ready: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    records = LeasedJobRecords(
        Database(url), LeaseTerms(node="doomed", lease_s=2.0, heartbeat_s=0.2)
    )
    assert records.claim_next() is not None
    ready.set()  # type: ignore[attr-defined]
    time.sleep(600)


def test_a_killed_trainer_process_leaves_an_interrupted_job(catalog: Database) -> None:
    (job_id,) = _queue(catalog, 1)
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    child = context.Process(target=_lease_then_hang, args=(catalog.url, ready))
    child.start()
    try:
        assert ready.wait(120), "the child never leased the job"
        watcher = _records(catalog, "watcher")
        time.sleep(3.0)  # heartbeats run: the lease outlives its length
        assert watcher.reap_expired() == [] and watcher.status(job_id) == "validating"
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        wait_for(lambda: watcher.reap_expired() == [job_id], timeout=20)
        record = watcher.get(job_id)
        assert record.status == "failed" and record.error is not None
        assert record.error["code"] == "interrupted"
    finally:
        if child.is_alive():
            child.kill()


def test_a_job_manager_runs_leased_jobs_and_gives_the_lease_back(
    catalog: Database, tmp_path: Path
) -> None:
    settings = Settings(store=tmp_path / "store", _env_file=None, node_name="n1")
    records = LeasedJobRecords(catalog, LeaseTerms(node="n1", lease_s=5, heartbeat_s=1))
    manager = JobManager(
        catalog,
        DatasetService(catalog, settings),
        settings,
        train_fn=FakeTrainer(),
        register_fn=FakeRegistry().register,
        poll_interval_s=0.02,
        progress_interval_s=0.0,
        records=records,
    )
    manager.start()
    try:
        dataset = manager.datasets.create("d.jsonl", DATASET)
        job = manager.create({"adapter": "leased", "training_data": dataset["id"]})
        wait_for(lambda: manager.get(job["id"])["status"] == "succeeded")
        assert manager.get(job["id"])["result"] == {"adapter": "leased", "version": 1}
        with catalog.session() as session:
            assert session.scalars(select(JobLease)).all() == []
    finally:
        manager.shutdown(timeout=2)


def test_leases_are_used_only_on_a_server_catalog(tmp_path: Path) -> None:
    settings = Settings(store=tmp_path / "store", _env_file=None)
    sqlite = Database(settings.resolved_database_url)
    assert leased_records(sqlite, settings) is None
    sqlite.dispose()
    with pytest.raises(ValueError, match="job_heartbeat_s"):
        Settings(store=tmp_path, _env_file=None, job_lease_s=5, job_heartbeat_s=5)
    with pytest.raises(ValueError, match="heartbeat_s"):
        LeaseTerms(node="x", lease_s=1, heartbeat_s=2)
