"""Training jobs and their event logs in the catalog: rows, state changes, the JSON API.md shows.

Every state change is a conditional update (`WHERE status IN (...)`) committed together with
its `status` event, so two threads (a worker finishing, a user cancelling) never both win,
and a reader that sees a terminal status also sees the event that says so.
"""

from __future__ import annotations

import builtins
import logging
import math
import time
from collections.abc import Sequence
from typing import Any, cast

import torch
from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from app.db import Database, DatabaseUnavailable, JobEvent, TrainingJob, iso, utcnow
from app.errors import SwitchyardError, not_found

log = logging.getLogger(__name__)

QUEUED, VALIDATING, RUNNING = "queued", "validating", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, VALIDATING, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (VALIDATING, RUNNING)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
_JSON_FIELDS = {"progress", "metrics", "best", "result", "error", "hyperparameters", "summary"}


def initial_progress() -> dict[str, Any]:
    """Progress of a job that has not run a step."""
    return {"step": 0, "total_steps": None, "epoch": 0.0, "percent": 0.0, "eta_seconds": None}


def jsonable(value: Any) -> Any:
    """Plain JSON: tensors and numpy scalars become numbers, NaN and infinities null.

    Starlette refuses NaN when rendering, so a diverged loss must not reach a response as NaN.
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)  # numpy and torch scalars
    if callable(item):
        return jsonable(item())
    return str(value)


class JobRecords:
    """Reads and writes of `training_jobs` and `job_events`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ---------------------------------------------------------------- reading
    def get(self, job_id: str) -> TrainingJob:
        """A job's row; 404 when unknown."""
        with self.db.session() as session:
            record = session.get(TrainingJob, job_id) if isinstance(job_id, str) else None
        if record is None:
            raise not_found("job_not_found", f"no training job with id {job_id!r}", param="id")
        return record

    def status(self, job_id: str) -> str:
        """A job's current status."""
        return self.get(job_id).status

    def list(self, *, limit: int = 100, status: str | None = None) -> builtins.list[TrainingJob]:
        """Jobs, newest first."""
        query = select(TrainingJob).order_by(TrainingJob.created_at.desc(), TrainingJob.id)
        if status is not None:
            query = query.where(TrainingJob.status == status)
        with self.db.session() as session:
            return builtins.list(session.scalars(query.limit(limit)).all())

    def events(self, job_id: str, *, after: int = 0, limit: int = 1000) -> builtins.list[JobEvent]:
        """A job's events with id > `after`, oldest first."""
        query = (
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(limit)
        )
        with self.db.session() as session:
            return builtins.list(session.scalars(query).all())

    # ---------------------------------------------------------------- writing
    def insert(self, record: TrainingJob) -> None:
        """A new job and its first status event."""
        with self.db.session() as session:
            session.add(record)
            session.flush()  # the event's foreign key needs the job row first
            session.add(JobEvent(job_id=record.id, kind="status", data={"status": record.status}))

    def transition(self, job_id: str, to: str, *, expect: Sequence[str], **fields: Any) -> bool:
        """Move a job from one of `expect` to `to`, setting `fields`; False if it was elsewhere."""
        values = {k: jsonable(v) if k in _JSON_FIELDS else v for k, v in fields.items()}
        if to in TERMINAL:
            values.setdefault("finished_at", utcnow())
        if to == RUNNING:
            values.setdefault("started_at", utcnow())
        data = {"status": to, **{k: values[k] for k in ("error", "result") if values.get(k)}}
        with self.db.session() as session:
            result = session.execute(
                update(TrainingJob)
                .where(TrainingJob.id == job_id, TrainingJob.status.in_(builtins.list(expect)))
                .values(status=to, **values)
            )
            if cast(CursorResult[Any], result).rowcount != 1:
                return False
            session.add(JobEvent(job_id=job_id, kind="status", data=data))
            self._on_transition(session, job_id=job_id, to=to)
        return True

    def _on_transition(self, session: Session, *, job_id: str, to: str) -> None:
        """Rows a subclass keeps in step with a job's status, written in the same transaction
        as the change, so no reader sees one without the other; nothing here."""

    def claim_next(self) -> TrainingJob | None:
        """Take the oldest queued job (queued -> validating); None when there is none."""
        while True:
            with self.db.session() as session:
                job_id = session.scalars(
                    select(TrainingJob.id)
                    .where(TrainingJob.status == QUEUED)
                    .order_by(TrainingJob.created_at, TrainingJob.id)
                    .limit(1)
                ).first()
            if job_id is None:
                return None
            # Another worker (or replica) may take it between the select and the update.
            if self.transition(job_id, VALIDATING, expect=(QUEUED,)):
                return self.get(job_id)

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        """Store a running job's latest progress."""
        with self.db.session() as session:
            session.execute(
                update(TrainingJob)
                .where(TrainingJob.id == job_id)
                .values(progress=jsonable(progress))
            )

    def add_event(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        """Append to a job's log; an `evaluation` is also appended to the job's metrics."""
        data = jsonable(data)
        with self.db.session() as session:
            session.add(JobEvent(job_id=job_id, kind=kind, data=data))
            if kind == "evaluation":
                record = session.get(TrainingJob, job_id)
                if record is not None:
                    # A new list: SQLAlchemy does not see in-place changes to a JSON column.
                    record.metrics = [*record.metrics, data]

    def interrupt(self, reason: str, job_ids: Sequence[str] | None = None) -> builtins.list[str]:
        """Fail active jobs (all, or `job_ids`) with code `interrupted`; returns their ids."""
        query = select(TrainingJob.id).where(TrainingJob.status.in_(ACTIVE))
        if job_ids is not None:
            query = query.where(TrainingJob.id.in_(builtins.list(job_ids)))
        with self.db.session() as session:
            candidates = builtins.list(session.scalars(query).all())
        error = {"code": "interrupted", "message": reason, "param": None}
        return [j for j in candidates if self.transition(j, FAILED, expect=ACTIVE, error=error)]


class JobReporter:
    """The trainer's callbacks for one job: progress (throttled) and events, into the catalog.

    A catalog outage while training loses a log line, not the run: the write is skipped (the
    job's metrics and progress are written again when it finishes).
    """

    def __init__(self, records: JobRecords, job_id: str, interval_s: float) -> None:
        self._records = records
        self._job_id = job_id
        self._interval_s = interval_s
        self._first: tuple[float, int] | None = None  # (time, step) of the first report
        self._written = 0.0
        self._latest = initial_progress()

    def progress(self, *, step: int, total_steps: int, epoch: float) -> None:
        """Record a step; the ETA extrapolates the pace since the first report."""
        now = time.monotonic()
        if self._first is None:
            self._first = (now, step)
        started, first_step = self._first
        eta = None
        if total_steps and step > first_step:
            eta = round((now - started) / (step - first_step) * max(total_steps - step, 0), 1)
        percent = round(min(100.0, 100.0 * step / total_steps), 1) if total_steps else 0.0
        self._latest = {
            "step": step,
            "total_steps": total_steps,
            "epoch": round(float(epoch), 3),
            "percent": percent,
            "eta_seconds": eta,
        }
        # Throttled: a write per step would make SQLite the bottleneck of a fast trainer.
        if now - self._written >= self._interval_s or step >= total_steps:
            self._written = now
            try:
                self._records.set_progress(self._job_id, self._latest)
            except DatabaseUnavailable:
                log.warning(
                    "job %s: progress not written, the catalog is unavailable", self._job_id
                )

    def event(self, kind: str, data: dict[str, Any]) -> None:
        """Append to the job's log ("loss", "evaluation", "info")."""
        try:
            self._records.add_event(self._job_id, kind, data)
        except DatabaseUnavailable:
            log.warning("job %s: %s event lost, the catalog is unavailable", self._job_id, kind)

    def final(self, *, stopped_early: bool = False) -> dict[str, Any]:
        """Progress of a finished job. A run that stopped early says so, and keeps the step it
        stopped at (of the steps it had planned) rather than claiming the whole schedule."""
        step = self._latest.get("step")
        # Planned totals of multi-part jobs (folds, candidates) are estimates: once done, the
        # steps run are the total, unless the run stopped short of its plan.
        total = self._latest.get("total_steps") if stopped_early else step
        return {
            **self._latest,
            "step": step,
            "total_steps": total,
            "percent": 100.0,
            "eta_seconds": 0.0,
            "stopped_early": stopped_early,
        }


def job_to_json(record: TrainingJob) -> dict[str, Any]:
    """The job as API.md shows it."""
    request, summary = record.request, record.summary
    return {
        "id": record.id,
        "object": "training_job",
        "adapter": record.adapter,
        "task": record.task,
        "method": record.method,
        "status": record.status,
        "training_data": request.get("training_data"),
        "validation_data": request.get("validation_data"),
        "labels": summary.get("labels", []),
        "rows": {
            "train": summary.get("train_rows"),
            "validation": summary.get("validation_rows"),
            "validation_source": summary.get("validation_source"),
        },
        "progress": record.progress or initial_progress(),
        "metrics": record.metrics,
        "best": record.best,
        "selection": (record.best or {}).get("selection"),
        "candidates": (record.result or {}).get("candidates"),
        "result": record.result,
        "error": record.error,
        "hyperparameters": record.hyperparameters,
        "base_adapter": _base_adapter(request),
        "domain_effect": (record.result or {}).get("domain_effect"),
        "created_at": iso(record.created_at),
        "started_at": iso(record.started_at),
        "finished_at": iso(record.finished_at),
    }


def _base_adapter(request: dict[str, Any]) -> dict[str, Any] | None:
    """The stored LoRA a job stacks on, as lineage names a parent."""
    if request.get("base_adapter") is None:
        return None
    return {"adapter": request["base_adapter"], "version": request.get("base_adapter_version")}


def event_to_json(record: JobEvent) -> dict[str, Any]:
    """One event of a job's log."""
    return {
        "id": record.id,
        "job_id": record.job_id,
        "created_at": iso(record.created_at),
        "kind": record.kind,
        "data": record.data,
    }


def error_json(exc: SwitchyardError) -> dict[str, Any]:
    """A job's `error` field from the exception that failed it."""
    return {"code": exc.code, "message": exc.message, "param": exc.param}


def failure(exc: Exception, job_id: str) -> dict[str, Any]:
    """A failed job's `error`: the code of a SwitchyardError (a user's value, a refusal, an
    outage), `out_of_memory` for memory, and `internal_error` only for what is left: a bug."""
    if isinstance(exc, SwitchyardError):
        return error_json(exc)
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        message = "training ran out of memory; lower batch_size or max_length"
        return {"code": "out_of_memory", "message": message, "param": "hyperparameters.batch_size"}
    log.exception("training job %s failed", job_id, exc_info=exc)
    message = f"training failed unexpectedly: {type(exc).__name__}: {exc}"[:1000]
    return {"code": "internal_error", "message": message, "param": None}
