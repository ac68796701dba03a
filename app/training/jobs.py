"""Training jobs: validated at submission, persisted, run by worker threads, cancellable.

A job is checked completely when it is submitted (data, task, labels, method, name), so a
400 comes back at once instead of a failed job later. Workers take queued jobs oldest first,
rebuild the plan from the persisted request (the same code, so it is the same plan), call the
trainer, and register the best checkpoint only if nobody cancelled in the meantime. A job
left running by a crash fails as `interrupted` at the next start; queued jobs survive.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from app.config import Settings
from app.db import Database, DatabaseUnavailable, TrainingJob
from app.errors import SwitchyardError, bad_request
from app.registry.store import CONFIG_FILE, WEIGHTS_FILE
from app.training.datasets import DatasetService
from app.training.job_records import (
    ACTIVE,
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    STATUSES,
    SUCCEEDED,
    TERMINAL,
    VALIDATING,
    JobRecords,
    JobReporter,
    event_to_json,
    failure,
    initial_progress,
    job_to_json,
    jsonable,
)
from app.training.planning import JobRequest, ParentCheck, PreparedJob, prepare_job, stack_on
from app.training.types import (
    CancelToken,
    RegisterFn,
    TrainFn,
    TrainingCancelled,
    TrainingOutcome,
    TrainingPlan,
)

log = logging.getLogger(__name__)

HyperparameterCheck = Callable[[dict[str, Any]], object]
PlanCheck = Callable[[TrainingPlan], object]
RESTART_MESSAGE = "the service restarted while this job was running; submit it again"
SHUTDOWN_MESSAGE = "the service shut down while this job was running; submit it again"
_STREAM_BATCH = 500  # events per poll of a stream
# A job's last write (succeeded, failed) waits out a catalog outage this long: giving up leaves
# the job `running` until the next start marks it interrupted.
_FINAL_WRITE_TRIES = 8
_FINAL_WRITE_BACKOFF_S = 0.25


class JobManager:
    """The training queue: create, run, cancel and watch jobs; worker threads do the training.

    `train_fn` is the trainer (`app.training.trainer.train` bound to the base; tests pass a
    fake), `register_fn` stores the result (`Registry.register`). `check_hyperparameters` and
    `check_plan` (the trainer's dry run, `app.training.preflight.preflight` bound to the base),
    when given, run at submission so that a user's mistake is a 400, not a failed job.
    """

    def __init__(
        self,
        db: Database,
        datasets: DatasetService,
        settings: Settings,
        *,
        train_fn: TrainFn,
        register_fn: RegisterFn,
        check_hyperparameters: HyperparameterCheck | None = None,
        check_plan: PlanCheck | None = None,
        check_parent: ParentCheck | None = None,
        poll_interval_s: float = 1.0,
        progress_interval_s: float = 0.5,
        cancel_wait_s: float = 5.0,
        records: JobRecords | None = None,
    ) -> None:
        # Replicas sharing a catalog pass leased records (app/scaleout/leasing.py).
        self.records = records or JobRecords(db)
        self.datasets = datasets
        self.settings = settings
        self._train_fn = train_fn
        self._register_fn = register_fn
        self._check_hyperparameters = check_hyperparameters
        self._check_plan = check_plan
        self._check_parent = check_parent
        self._poll_interval_s = poll_interval_s
        self._progress_interval_s = progress_interval_s
        self._cancel_wait_s = cancel_wait_s
        self._tokens: dict[str, CancelToken] = {}  # jobs running in this process
        self._lock = threading.Lock()
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._interrupt_pending = False  # the restart sweep, if the catalog was down at start

    # ---------------------------------------------------------------- the API
    def create(self, request: JobRequest | Mapping[str, Any]) -> dict[str, Any]:
        """Validate a job completely, persist it `queued` and return its JSON. `request` is
        the route's parsed body, or a JSON body (the CLI's, a test's) parsed here."""
        if not isinstance(request, JobRequest):
            request = JobRequest.parse(request)
        if self._check_hyperparameters is not None:
            self._check_hyperparameters(request.hyperparameters)
        prepared = self._prepare(request)
        if self._check_plan is not None:
            self._check_plan(prepared.plan)
        if request.base_adapter is not None:
            request, prepared = stack_on(request, prepared, self._check_parent)
        record = TrainingJob(
            id=f"job_{secrets.token_hex(12)}",
            adapter=request.adapter,
            task=prepared.plan.task,
            method=request.method,
            status=QUEUED,
            request=request.to_record(task=prepared.plan.task),
            summary=prepared.summary.as_json(),
            hyperparameters=request.hyperparameters,
            progress=initial_progress(),
            metrics=[],
        )
        self.records.insert(record)
        created = job_to_json(record)  # as submitted: a worker may take it any moment now
        with self._wake:
            self._wake.notify()
        return created

    def get(self, job_id: str) -> dict[str, Any]:
        """A job's JSON; 404 when unknown."""
        return job_to_json(self.records.get(job_id))

    def list(self, *, limit: int = 100, status: str | None = None) -> builtins.list[dict[str, Any]]:
        """Jobs, newest first, optionally of one status."""
        if status is not None and status not in STATUSES:
            raise bad_request(
                "invalid_status", f"status must be one of {list(STATUSES)}", param="status"
            )
        return [job_to_json(r) for r in self.records.list(limit=limit, status=status)]

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Stop a job; nothing is registered. Waits a little for a running one to stop."""
        status = self.records.status(job_id)
        if status == QUEUED and self.records.transition(job_id, CANCELLED, expect=(QUEUED,)):
            return self.get(job_id)
        status = self.records.status(job_id)  # it may have been claimed meanwhile
        if status in ACTIVE:
            with self._lock:
                token = self._tokens.get(job_id)
            if token is None:
                # Not running in this process (left over, say): nothing to stop, just mark it.
                self.records.transition(job_id, CANCELLED, expect=ACTIVE)
            else:
                token.cancel("cancelled")
                self._wait_terminal(job_id, self._cancel_wait_s)
        elif status in (SUCCEEDED, FAILED):
            raise SwitchyardError(
                409, "job_not_cancellable", f"job {job_id} already {status}", param="id"
            )
        return self.get(job_id)

    def events(
        self, job_id: str, after_id: int = 0, limit: int = 1000
    ) -> builtins.list[dict[str, Any]]:
        """A job's log after event `after_id`, oldest first; 404 for an unknown job."""
        self.records.get(job_id)
        return [event_to_json(e) for e in self.records.events(job_id, after=after_id, limit=limit)]

    async def stream(
        self, job_id: str, after_id: int = 0, *, poll_s: float = 0.25, heartbeat_s: float = 15.0
    ) -> AsyncIterator[dict[str, Any] | None]:
        """Events as they come, until the job is over; None now and then when nothing happened,
        so that the caller can send a keep-alive. Check the job exists before iterating."""
        quiet_since = time.monotonic()
        while True:
            status, batch = await asyncio.to_thread(self._poll, job_id, after_id)
            for item in batch:
                after_id = item["id"]
                yield item
            if batch:
                quiet_since = time.monotonic()
            # The terminal status event commits with the status: seeing one means having both.
            if status in TERMINAL and len(batch) < _STREAM_BATCH:
                return
            if time.monotonic() - quiet_since >= heartbeat_s:
                quiet_since = time.monotonic()
                yield None
            if len(batch) < _STREAM_BATCH:
                await asyncio.sleep(poll_s)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Fail jobs a previous process left running, then start the workers."""
        if self._threads:
            return
        self._interrupt_pending = True
        self._sweep_interrupted()
        self._stopping.clear()
        for index in range(self.settings.max_concurrent_jobs):
            thread = threading.Thread(
                target=self._work, name=f"training-worker-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the workers: running jobs fail as `interrupted`, queued ones wait for a start."""
        self._stopping.set()
        with self._lock:
            running = dict(self._tokens)
        for token in running.values():
            token.cancel("shutdown")
        with self._wake:
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        # A trainer that ignored its token: fail the job now; its late result is never stored.
        try:
            if running:
                self.records.interrupt(SHUTDOWN_MESSAGE, builtins.list(running))
        except DatabaseUnavailable:
            log.warning(
                "catalog database unavailable at shutdown: the next start marks %s interrupted",
                sorted(running),
            )
        self._threads = [t for t in self._threads if t.is_alive()]

    # ---------------------------------------------------------------- workers
    def _sweep_interrupted(self) -> None:
        """Fail the jobs a previous process left running; retried by the workers while the
        catalog is down (before they claim anything: a claimed job is not a leftover)."""
        try:
            with self._lock:
                if not self._interrupt_pending:
                    return
                interrupted = self.records.interrupt(RESTART_MESSAGE)
                self._interrupt_pending = False
        except DatabaseUnavailable:
            log.warning("catalog database unavailable: interrupted jobs are marked later")
            return
        for job_id in interrupted:
            log.warning("training job %s was interrupted by a restart", job_id)

    def _claim(self) -> TrainingJob | None:
        self._sweep_interrupted()
        with self._lock:
            if self._stopping.is_set() or self._interrupt_pending:
                return None
            try:
                record = self.records.claim_next()
            except DatabaseUnavailable:
                return None  # wait a poll interval and try again: the outage may be over
            if record is not None:
                self._tokens[record.id] = CancelToken()
            return record

    def _work(self) -> None:
        while not self._stopping.is_set():
            record = self._claim()
            if record is None:
                with self._wake:
                    self._wake.wait(self._poll_interval_s)
                continue
            try:
                self._run(record)
            except Exception:  # the loop must survive anything, or jobs stop being run
                log.exception("training worker failed on job %s", record.id)
            finally:
                with self._lock:
                    self._tokens.pop(record.id, None)

    def _run(self, record: TrainingJob) -> None:
        token = self._tokens[record.id]
        try:
            plan = self._prepare(JobRequest.from_record(record.request)).plan
            _raise_if_cancelled(token)
            if not self.records.transition(record.id, RUNNING, expect=(VALIDATING,)):
                return  # cancelled while validating
            reporter = JobReporter(self.records, record.id, self._progress_interval_s)
            outcome = self._train_fn(plan, reporter=reporter, cancel=token)
            _raise_if_cancelled(token)
            if self.records.status(record.id) != RUNNING:
                return  # cancelled or failed by shutdown from elsewhere: keep nothing
            # From here a cancel comes too late: the version is stored and the job succeeds.
            version = self._register(record, plan, outcome)
        except Exception as exc:
            self._fail(record.id, token, exc)
            return
        result: dict[str, Any] = {"adapter": record.adapter, "version": version}
        if outcome.candidates is not None:
            result["candidates"] = outcome.candidates
        if outcome.domain_effect is not None:
            result["domain_effect"] = outcome.domain_effect
        self._final_write(
            record.id,
            SUCCEEDED,
            result=jsonable(result),
            metrics=outcome.history or self.records.get(record.id).metrics,
            best=jsonable(
                {**outcome.best, "metrics": outcome.metrics, "selection": outcome.selection}
            ),
            hyperparameters=outcome.hyperparameters,
            progress=reporter.final(stopped_early=bool(outcome.selection.get("stopped_early"))),
        )
        log.info("training job %s registered %s v%d", record.id, record.adapter, version)

    def _fail(self, job_id: str, token: CancelToken, exc: Exception) -> None:
        if token.cancelled and token.reason == "shutdown":
            error = {"code": "interrupted", "message": SHUTDOWN_MESSAGE, "param": None}
            self._final_write(job_id, FAILED, error=error)
        elif token.cancelled or isinstance(exc, TrainingCancelled):
            self._final_write(job_id, CANCELLED)
        else:
            self._final_write(job_id, FAILED, error=failure(exc, job_id))

    def _final_write(self, job_id: str, status: str, **fields: Any) -> None:
        """The job's terminal transition, tried again through a short catalog outage."""
        for attempt in range(_FINAL_WRITE_TRIES):
            try:
                self.records.transition(job_id, status, expect=ACTIVE, **fields)
                return
            except DatabaseUnavailable:
                if attempt == _FINAL_WRITE_TRIES - 1:
                    raise
                time.sleep(_FINAL_WRITE_BACKOFF_S * 2**attempt)

    def _register(self, record: TrainingJob, plan: TrainingPlan, outcome: TrainingOutcome) -> int:
        missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if f not in outcome.files]
        if missing:
            raise SwitchyardError(500, "internal_error", f"the trainer returned no {missing}")
        request = JobRequest.from_record(record.request)
        lineage: dict[str, Any] = {
            "source": "training",
            "job_id": record.id,
            "training_data": request.training_data,
            "validation_data": request.validation_data,
            "examples": len(request.examples) if request.examples else None,
        }
        if outcome.parent is not None:  # a stack: its LoRA holds the parent's (stacking.py)
            lineage["parent"] = {"adapter": outcome.parent.name, "version": outcome.parent.version}
        meta = {
            "lineage": lineage,
            "metrics": outcome.metrics,
            "hyperparameters": outcome.hyperparameters,
            "training": {"best": outcome.best, "rows": record.summary},
        }
        if outcome.domain_effect is not None:
            meta["domain_effect"] = outcome.domain_effect
        return self._register_fn(
            record.adapter,
            config_bytes=outcome.files[CONFIG_FILE],
            weights_bytes=outcome.files[WEIGHTS_FILE],
            task=outcome.task or plan.task,
            labels=plan.labels,
            meta=jsonable(meta),
        )

    # ---------------------------------------------------------------- helpers
    def _prepare(self, request: JobRequest) -> PreparedJob:
        return prepare_job(
            request, self.datasets, max_training_rows=self.settings.max_training_rows
        )

    def _poll(self, job_id: str, after_id: int) -> tuple[str, builtins.list[dict[str, Any]]]:
        status = self.records.status(job_id)  # read first: see stream() on why
        return status, self.events(job_id, after_id, limit=_STREAM_BATCH)

    def _wait_terminal(self, job_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.records.status(job_id) not in TERMINAL:
            time.sleep(0.02)


def _raise_if_cancelled(token: CancelToken) -> None:
    if token.cancelled:
        raise TrainingCancelled(token.reason)
