"""`GET /v1/models`: the base and every adapter, as the OpenAI SDK lists models.

The base is `_base` (the name the completion routes take for it, which no adapter can have);
an adapter's id is its name, whose latest version the other OpenAI routes serve. A key limited
to some adapters sees only those, as in `GET /v1/adapters`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from app.api.auth import Principal
from app.api.deps import PrincipalDep, RegistryDep
from app.api.openai_schemas import Model, ModelExtension, ModelList, ModelVersion, unix_seconds
from app.errors import SwitchyardError, not_found
from app.registry.catalog import Registry
from app.registry.store import check_name
from app.runtime.admission import BASE_LABEL

router = APIRouter(prefix="/v1/models", tags=["openai"])
OWNER = "switchyard"


@router.get("", response_model=ModelList)
async def list_models(registry: RegistryDep, principal: PrincipalDep) -> ModelList:
    """The base, then every adapter this key may use."""
    return await run_in_threadpool(_list, registry, principal)


@router.get("/{model_id}", response_model=Model)
async def get_model(model_id: str, registry: RegistryDep, principal: PrincipalDep) -> Model:
    """One model; 404 `model_not_found` for an id that is neither the base nor an adapter."""
    if model_id == BASE_LABEL:
        return base_model(registry)
    principal.check_adapter(model_id)
    try:
        check_name(model_id)
        return await run_in_threadpool(adapter_model, registry, model_id)
    except SwitchyardError as exc:
        if exc.status not in (400, 404):
            raise
        raise not_found("model_not_found", f"no model with id {model_id!r}", param="model") from exc


def _list(registry: Registry, principal: Principal) -> ModelList:
    data = [base_model(registry)]
    for name in registry.names():
        if principal.adapters is not None and name not in principal.adapters:
            continue
        try:
            data.append(adapter_model(registry, name))
        except SwitchyardError:
            continue  # deleted meanwhile, or corrupted: it fails on its own requests
    return ModelList(data=data)


def base_model(registry: Registry) -> Model:
    """The bare base as a model."""
    base = registry.base
    try:
        created = int(base.path.stat().st_mtime)
    except OSError:
        created = 0
    return Model(
        id=BASE_LABEL,
        created=created,
        owned_by=OWNER,
        switchyard=ModelExtension(
            kind="base", base_model=base.name, base_fingerprint=base.fingerprint
        ),
    )


def adapter_model(registry: Registry, name: str) -> Model:
    """An adapter as a model: every version with its lineage."""
    details = registry.details(name)
    versions = [_version(meta) for meta in details["versions"]]
    latest = next(v for v in versions if v.version == details["latest_version"])
    first = min(versions, key=lambda v: v.version)
    return Model(
        id=name,
        created=first.created,
        owned_by=OWNER,
        switchyard=ModelExtension(
            kind="adapter",
            task=details.get("task"),
            method=details.get("method"),
            labels=list(details.get("labels") or []),
            latest_version=latest.version,
            versions=versions,
            base_model=registry.base.name,
            base_fingerprint=registry.base.fingerprint,
            parent=latest.parent,
        ),
    )


def _version(meta: dict[str, Any]) -> ModelVersion:
    raw = meta.get("lineage")
    lineage: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return ModelVersion(
        version=int(meta["version"]),
        created=unix_seconds(meta.get("created_at")) or 0,
        method=meta.get("method"),
        parent=lineage.get("parent"),
        lineage=lineage,
    )
