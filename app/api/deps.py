"""Typed `Depends` aliases: routes name what they need, the app state provides it.

The providers are `async def` although they never wait: FastAPI runs a plain `def`
dependency in its thread pool, a thread hop per dependency per request on the serving path.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.auth import ANONYMOUS_ADMIN, Principal
from app.base import FrozenBase
from app.config import Settings
from app.registry.catalog import Registry
from app.runtime.metrics import Metrics
from app.runtime.runtime import Runtime
from app.training.datasets import DatasetService
from app.training.jobs import JobManager


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _base(request: Request) -> FrozenBase:
    return request.app.state.base


async def _registry(request: Request) -> Registry:
    return request.app.state.registry


async def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def _datasets(request: Request) -> DatasetService:
    return request.app.state.datasets


async def _jobs(request: Request) -> JobManager:
    return request.app.state.jobs


async def _principal(request: Request) -> Principal:
    # Set by the route's `require(scope)` dependency, which FastAPI resolves first.
    return getattr(request.state, "principal", ANONYMOUS_ADMIN)


SettingsDep = Annotated[Settings, Depends(_settings)]
BaseDep = Annotated[FrozenBase, Depends(_base)]
RegistryDep = Annotated[Registry, Depends(_registry)]
RuntimeDep = Annotated[Runtime, Depends(_runtime)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
DatasetsDep = Annotated[DatasetService, Depends(_datasets)]
JobsDep = Annotated[JobManager, Depends(_jobs)]
PrincipalDep = Annotated[Principal, Depends(_principal)]
