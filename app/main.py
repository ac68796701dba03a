"""create_app(settings): the lifespan wires base, registry, runtime and training together."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from app.api.auth import KeyRing, require
from app.api.docs import install_docs
from app.api.errors import ERROR_RESPONSES, install_error_handlers
from app.api.json_route import install_untrusted
from app.api.limits import BodyLimitMiddleware
from app.api.routes import (
    adapters,
    datasets,
    files,
    fine_tuning,
    health,
    inference,
    models,
    openai,
    training_jobs,
    ui,
)
from app.base import FrozenBase, load_base
from app.config import Settings
from app.db import open_database
from app.registry.catalog import Registry
from app.registry.store import AdapterStore
from app.runtime.metrics import Metrics
from app.runtime.runtime import Runtime
from app.scaleout.leasing import leased_records
from app.scaleout.versions import reconcile_quietly, shared_ledger
from app.training.datasets import DatasetService
from app.training.jobs import JobManager
from app.training.preflight import preflight
from app.training.stacking import check_parent, load_parent
from app.training.trainer import train

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, base: FrozenBase | None = None) -> FastAPI:
    """Build the service. Tests pass a tiny `base`; production loads the configured one."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.readiness = "starting"
        await run_in_threadpool(_start, app, settings, base)
        app.state.runtime.start()
        await run_in_threadpool(app.state.runtime.warm_up)
        if settings.train_in_process:
            app.state.jobs.start()
        app.state.readiness = "ready"
        log.info("ready on %s:%d", settings.host, settings.port)
        try:
            yield
        finally:
            app.state.readiness = "draining"
            await run_in_threadpool(app.state.jobs.shutdown, settings.shutdown_timeout_s)
            await app.state.runtime.stop()
            app.state.db.dispose()

    app = FastAPI(
        title="Switchyard",
        version="1",
        description="One frozen base model, many small adapters, trained and served over HTTP.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        docs_url=None,  # served by install_docs from local assets, not a CDN
        redoc_url=None,
    )
    install_docs(app)
    app.state.settings = settings
    app.state.readiness = "starting"
    app.state.keys = KeyRing(settings)
    install_error_handlers(app)
    _include_routers(app)
    install_untrusted(app)  # every JSON body and query through app.untrusted
    app.add_middleware(
        BodyLimitMiddleware,
        body_bytes=settings.max_body_bytes,
        upload_bytes=settings.max_upload_bytes,
        dataset_bytes=max(settings.max_dataset_bytes, settings.max_corpus_bytes),
        max_parts=settings.max_multipart_parts,
        read_timeout_s=settings.body_read_timeout_s,
    )
    return app


def _include_routers(app: FastAPI) -> None:
    """Each router behind the scope its callers need; health and adapters set theirs per route."""
    app.include_router(health.router)
    app.include_router(ui.router)  # the page is public; its data calls carry the key
    app.include_router(adapters.router)
    # openai's fixed paths (/v1/adapters/_base/predict) must precede the inference patterns.
    for module in (openai, inference, models):
        app.include_router(module.router, dependencies=[Depends(require("predict"))])
    for module in (datasets, training_jobs, fine_tuning, files):
        app.include_router(module.router, dependencies=[Depends(require("train"))])


def _start(app: FastAPI, settings: Settings, base: FrozenBase | None) -> None:
    db = open_database(settings)
    # Replicas sharing a server catalog draw version numbers from it (app/scaleout/versions.py).
    ledger = shared_ledger(db)
    store = AdapterStore(settings.store, ledger=ledger)
    removed = store.sweep()
    if removed:
        log.warning("start-up removed %d leftovers of interrupted writes", len(removed))
    base = base or load_base(settings)
    metrics = Metrics()
    registry = Registry(store, base, settings)
    app.state.base = base
    app.state.metrics = metrics
    app.state.registry = registry
    runtime = Runtime(base, registry, settings, metrics)
    app.state.runtime = runtime
    if ledger is not None:
        reconcile_quietly(ledger, store)
    app.state.db = db
    app.state.datasets = DatasetService(db, settings)
    rank, tokens = settings.max_rank, settings.max_input_tokens
    app.state.jobs = JobManager(
        db,
        app.state.datasets,
        settings,
        train_fn=functools.partial(
            train,
            base=base,
            pause=runtime.yield_to_requests,
            max_rank=rank,
            max_tokens=tokens,
            checkpoint_activations=settings.checkpoint_activations,
            micro_batch_tokens=settings.train_micro_batch_tokens,
            parents=functools.partial(load_parent, registry),
            lower_cache_mib=settings.train_lower_cache_mib,
        ),
        register_fn=registry.register,
        check_plan=functools.partial(preflight, base=base, max_rank=rank, max_tokens=tokens),
        check_parent=functools.partial(check_parent, registry, base=base, max_rank=rank),
        records=leased_records(db, settings),
    )
