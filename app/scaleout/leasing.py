"""Training jobs leased from the shared queue: at most N per node, held by a heartbeat.

With one process per catalog, a job left `running` at start is a leftover of a crash. With
replicas sharing a catalog it may be another node's live job, so `LeasedJobRecords` replaces
that sweep with leases: a worker takes the oldest queued job together with a lease row
(`SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL, so nodes polling at once never wait on
each other or take the same job), a heartbeat thread extends the lease while the job runs,
and any node that polls finds jobs whose lease expired (their trainer died, or its node lost
the database for longer than the lease) and fails them as `interrupted`, never leaving them
`running`. A failed job is not retried: a retry could race a trainer that is only slow.

Expiry is judged by each node's clock: keep the nodes' clocks within a small part of the
lease (NTP does). At most `max_per_node` leases of one node are live at once; on PostgreSQL
an advisory lock per node makes the count and the new lease one step across its processes (on
SQLite, which tests use, the database's write lock does).
"""

from __future__ import annotations

import builtins
import datetime as dt
import logging
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, delete, false, func, or_, select, text, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import Database, DatabaseUnavailable, JobEvent, JobLease, TrainingJob, utcnow
from app.training.job_records import ACTIVE, FAILED, QUEUED, TERMINAL, VALIDATING, JobRecords

log = logging.getLogger(__name__)

EXPIRED_MESSAGE = "the node training this job stopped renewing its lease; submit it again"


@dataclass(frozen=True)
class LeaseTerms:
    """How long a lease lasts, how often it is renewed, and how many one node may hold."""

    node: str
    lease_s: float = 30.0
    heartbeat_s: float = 10.0
    max_per_node: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_s < self.lease_s:
            raise ValueError(
                f"heartbeat_s {self.heartbeat_s} must be above 0 and below lease_s "
                f"{self.lease_s}, or a live job's lease would expire between two heartbeats"
            )
        if self.max_per_node < 1:
            raise ValueError(f"max_per_node {self.max_per_node} must be at least 1")


class LeasedJobRecords(JobRecords):
    """`JobRecords` whose claims are leases on a catalog shared by several nodes."""

    def __init__(self, db: Database, terms: LeaseTerms) -> None:
        super().__init__(db)
        self.terms = terms
        self._beats: dict[str, threading.Event] = {}
        self._beats_lock = threading.Lock()

    def claim_next(self) -> TrainingJob | None:
        """Fail expired jobs, then lease the oldest queued one (None at this node's limit)."""
        self.reap_expired()
        with self.db.session() as session:
            job_id = self._lease_one(session)
        if job_id is None:
            return None
        self._start_heartbeat(job_id)
        return self.get(job_id)

    def transition(self, job_id: str, to: str, *, expect: Sequence[str], **fields: Any) -> bool:
        """As `JobRecords.transition`; a terminal state also gives the lease back.

        Only a change that took gives the lease back: a cancel of a queued job that a worker
        claimed meanwhile fails, and the running job must keep its lease and heartbeat."""
        changed = super().transition(job_id, to, expect=expect, **fields)
        if to in TERMINAL and (changed or self.status(job_id) in TERMINAL):
            self._stop_heartbeat(job_id)
        return changed

    def _on_transition(self, session: Session, *, job_id: str, to: str) -> None:
        # In the status change's transaction: a reader that sees the job finished never
        # also sees its lease (another node would count it against this node's limit).
        if to in TERMINAL:
            session.execute(delete(JobLease).where(JobLease.job_id == job_id))

    def interrupt(self, reason: str, job_ids: Sequence[str] | None = None) -> builtins.list[str]:
        """Named jobs as `JobRecords.interrupt`; with none named (a start), only the jobs whose
        lease expired: the others are live on other nodes."""
        if job_ids is not None:
            return super().interrupt(reason, job_ids)
        return self.reap_expired()

    def reap_expired(self) -> builtins.list[str]:
        """Fail active jobs with an expired lease, or none; returns their ids."""
        now = utcnow()
        query = (
            select(TrainingJob.id)
            .outerjoin(JobLease, JobLease.job_id == TrainingJob.id)
            .where(TrainingJob.status.in_(ACTIVE))
            .where(or_(JobLease.job_id.is_(None), JobLease.expires_at <= now))
        )
        with self.db.session() as session:
            expired = builtins.list(session.scalars(query).all())
        error = {"code": "interrupted", "message": EXPIRED_MESSAGE, "param": None}
        reaped = []
        for job_id in expired:
            if self.transition(job_id, FAILED, expect=ACTIVE, error=error):
                log.warning("training job %s lost its lease: failed as interrupted", job_id)
                reaped.append(job_id)
        return reaped

    def live_leases(self) -> int:
        """Leases this node holds that have not expired."""
        with self.db.session() as session:
            return self._held(session, utcnow())

    # ---------------------------------------------------------------- inside
    def _lease_one(self, session: Session) -> str | None:
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            key = zlib.crc32(self.terms.node.encode()) & 0x7FFFFFFF
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        elif dialect == "sqlite":
            # SQLite has no row locks and starts a transaction only at the first write: a write
            # that matches nothing takes the database's write lock first, so that two threads
            # of one node cannot both count a free place before either leases.
            session.execute(update(JobLease).where(false()).values(node=JobLease.node))
        now = utcnow()
        if self._held(session, now) >= self.terms.max_per_node:
            return None
        candidate = (
            select(TrainingJob.id)
            .where(TrainingJob.status == QUEUED)
            .order_by(TrainingJob.created_at, TrainingJob.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        job_id = session.scalars(candidate).first()
        if job_id is None:
            return None
        # Conditional, for SQLite (no row locks): two processes may both have selected it.
        taken = session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.status == QUEUED)
            .values(status=VALIDATING)
        )
        if cast(CursorResult[Any], taken).rowcount != 1:
            return None
        session.add(JobEvent(job_id=job_id, kind="status", data={"status": VALIDATING}))
        session.execute(delete(JobLease).where(JobLease.job_id == job_id))
        session.add(JobLease(job_id=job_id, node=self.terms.node, expires_at=self._until(now)))
        return job_id

    def _held(self, session: Session, now: dt.datetime) -> int:
        count = select(func.count()).select_from(JobLease)
        live = count.where(JobLease.node == self.terms.node, JobLease.expires_at > now)
        return int(session.scalar(live) or 0)

    def _until(self, now: dt.datetime) -> dt.datetime:
        return now + dt.timedelta(seconds=self.terms.lease_s)

    def renew(self, job_id: str) -> bool:
        """Extend this node's lease of a job; False when it is no longer held (reaped)."""
        now = utcnow()
        with self.db.session() as session:
            result = session.execute(
                update(JobLease)
                .where(JobLease.job_id == job_id, JobLease.node == self.terms.node)
                .values(expires_at=self._until(now), heartbeat_at=now)
            )
            return cast(CursorResult[Any], result).rowcount == 1

    def _start_heartbeat(self, job_id: str) -> None:
        stop = threading.Event()
        with self._beats_lock:
            self._beats[job_id] = stop
        thread = threading.Thread(
            target=self._beat, args=(job_id, stop), name=f"lease-{job_id}", daemon=True
        )
        thread.start()

    def _beat(self, job_id: str, stop: threading.Event) -> None:
        while not stop.wait(self.terms.heartbeat_s):
            try:
                if not self.renew(job_id):
                    log.error("training job %s: lease lost; its result will not be kept", job_id)
                    return
            except DatabaseUnavailable:
                # Keep trying: the lease outlives a few missed beats.
                log.warning("training job %s: catalog unavailable, lease not renewed", job_id)
            except Exception:
                # Not an outage (the table gone, a bug): renewing again would fail the same way.
                log.exception("training job %s: lease renewal failed; no longer renewed", job_id)
                return

    def _stop_heartbeat(self, job_id: str) -> None:
        with self._beats_lock:
            stop = self._beats.pop(job_id, None)
        if stop is not None:
            stop.set()


def leased_records(db: Database, settings: Settings) -> LeasedJobRecords | None:
    """Leased records for a catalog replicas share (a server database); None for SQLite,
    where one process owns the queue and a job left running at start is a crash's leftover."""
    if db.engine.dialect.name == "sqlite":
        return None
    terms = LeaseTerms(
        node=settings.node_name,
        lease_s=settings.job_lease_s,
        heartbeat_s=settings.job_heartbeat_s,
        max_per_node=settings.max_concurrent_jobs,
    )
    return LeasedJobRecords(db, terms)
