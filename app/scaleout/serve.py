"""Switchyard as a Ray Serve application: an ingress and N multiplexed runtime replicas.

The ingress (a plain FastAPI app, one replica, no model of its own) forwards each request to
the runtime deployment through a handle, with the adapter name as the multiplexed model id, so
Ray routes an adapter's requests to the replicas that hold it. Each runtime replica runs the
whole Switchyard app in-process (`forwarding.InProcessApp`): its own cache, its own batcher fed
by the requests Ray routes to it (not `@serve.batch`, which would split mixed batches by model
id), and its own training workers, which lease jobs from the shared catalog.

A replica that dies (kill -9) makes the requests it held fail; the ingress answers those 503
with Retry-After while Ray starts a new one. Needs the `ray` extra (`pip install -e .[ray]`).
"""

import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import ray
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

import app as app_package
from app.config import Settings
from app.main import create_app
from app.scaleout.forwarding import (
    REPLICA_HEADER,
    AdapterSlot,
    ForwardedHead,
    ForwardedRequest,
    ForwardedResponse,
    InProcessApp,
    is_streaming,
    relay,
    replica_unavailable,
    routing_key,
)
from app.scaleout.trainer import Trainer, trainer_options

log = logging.getLogger(__name__)

APP_NAME = "switchyard"
# How long Ray's router waits for a replica that holds the adapter before another one loads a
# second copy (Ray's default 1 s). Longer keeps an adapter on fewer replicas (fewer loads,
# more slots free) at the price of queueing behind a busy one: a hot adapter stays put.
MATCHING_TIMEOUT = "RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S"
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

# `serve.ingress` pickles the class as it is decorated: whatever its methods call must exist
# by then, so helpers live in `forwarding`, not below.
ingress_api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(ingress_api)
class Ingress:
    """The HTTP entry: forwards every request to a runtime replica chosen by its adapter."""

    def __init__(self, runtime: DeploymentHandle, trainer: DeploymentHandle) -> None:
        self.runtime = runtime
        # Bound so that Serve deploys the trainer with the app; requests never go to it.
        self.trainer = trainer

    @ingress_api.api_route("/{path:path}", methods=_METHODS, response_class=Response)
    async def forward(self, request: Request) -> Response:
        """One request, through the runtime deployment; a lost replica is a 503 to retry."""
        body = await request.body()
        forwarded = ForwardedRequest(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers=tuple(request.headers.items()),
            body=body,
        )
        key = routing_key(forwarded.path, body)
        handle = self.runtime.options(multiplexed_model_id=key) if key else self.runtime
        if is_streaming(forwarded):
            return await self.stream(handle, forwarded)
        try:
            answer: ForwardedResponse = await handle.answer.remote(forwarded)
        except Exception as exc:  # a replica killed or restarting: Ray's errors vary by kind
            log.warning("runtime replica failed a request: %s: %s", type(exc).__name__, exc)
            return replica_unavailable(exc)
        return Response(
            content=answer.body, status_code=answer.status, headers=dict(answer.headers)
        )

    async def stream(self, handle: DeploymentHandle, forwarded: ForwardedRequest) -> Response:
        """A streamed answer through Ray's streaming handle: chunks reach the client as the
        replica sends them; a replica lost before the head is a 503 to retry."""
        chunks = cast(
            DeploymentResponseGenerator, handle.options(stream=True).stream.remote(forwarded)
        )
        try:
            head: ForwardedHead = await chunks.__anext__()
        except Exception as exc:
            log.warning("runtime replica failed a stream: %s: %s", type(exc).__name__, exc)
            return replica_unavailable(exc)
        return StreamingResponse(relay(chunks), status_code=head.status, headers=dict(head.headers))


def runtime_deployment(max_adapters: int) -> Any:
    """The multiplexed runtime deployment holding at most `max_adapters` adapters a replica
    (the multiplexer's limit is fixed when the class is made, hence a factory)."""

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
    class Runtime:
        """One Switchyard replica: the whole app in-process, adapters multiplexed by name."""

        def __init__(self, settings_json: str) -> None:
            settings = Settings(**json.loads(settings_json), _env_file=None)
            self.inner = InProcessApp(create_app(settings))
            self.started = False
            context = serve.get_replica_context()
            self.replica = context.replica_id.unique_id if context else f"pid-{os.getpid()}"

        @serve.multiplexed(max_num_models_per_replica=max_adapters)
        async def slot(self, adapter: str) -> AdapterSlot:
            await self._started()
            return await self.inner.slot(adapter)

        async def answer(self, request: ForwardedRequest) -> ForwardedResponse:
            await self._started()
            adapter = serve.get_multiplexed_model_id()
            if adapter:
                await self.slot(adapter)
            return await self.inner.answer(request, self.replica)

        async def stream(self, request: ForwardedRequest) -> AsyncIterator[ForwardedHead | bytes]:
            await self._started()
            adapter = serve.get_multiplexed_model_id()
            if adapter:
                await self.slot(adapter)
            async for item in self.inner.stream(request, self.replica):
                yield item

        async def _started(self) -> None:
            # Serve runs __init__ synchronously; the app's start-up is async: run it once here.
            if not self.started:
                self.started = True
                await self.inner.start()

    return Runtime


def build_app(settings: Settings, *, replicas: int) -> Any:
    """The Serve application: the ingress bound to `replicas` runtime replicas, which only
    serve, and one trainer deployment, which leases the training jobs."""
    serving = settings.model_copy(update={"train_in_process": False})
    runtime = runtime_deployment(settings.replica_max_adapters).options(num_replicas=replicas)
    trainer = cast(Any, Trainer).options(ray_actor_options=trainer_options(settings))
    payload = settings.model_dump_json()
    return cast(Any, Ingress).bind(runtime.bind(serving.model_dump_json()), trainer.bind(payload))


def app_builder(args: dict[str, Any]) -> Any:
    """`serve deploy`'s entry (deploy/serve.yaml): settings from SWITCHYARD_* on the nodes,
    the replica count from the config's args."""
    return build_app(Settings(), replicas=int(args.get("replicas", 2)))


def start_cluster(settings: Settings, *, replicas: int, num_cpus: int | None = None) -> None:
    """Start a local Ray cluster and Switchyard on it, at the settings' host and port."""
    # Workers import `app` from this checkout, whichever way it was installed.
    source = str(Path(app_package.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": path, MATCHING_TIMEOUT: os.environ.get(MATCHING_TIMEOUT, "3")}
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        runtime_env={"env_vars": env},
        include_dashboard=False,
    )
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_app(settings, replicas=replicas), name=APP_NAME, route_prefix="/")
    log.info(
        "switchyard on Ray Serve: %d runtime replicas at %s:%d",
        replicas,
        settings.host,
        settings.port,
    )


__all__ = ["REPLICA_HEADER", "app_builder", "build_app", "start_cluster"]
