"""Adapters: list, details, upload (validated before storing), download, delete, pin."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from app.api.auth import Principal, require
from app.api.deps import PrincipalDep, RegistryDep, RuntimeDep, SettingsDep
from app.api.responses import (
    AdapterDeleted,
    AdapterDetails,
    AdapterList,
    AdapterSummary,
    AdapterVersion,
)
from app.errors import bad_request
from app.registry.catalog import parse_labels
from app.registry.store import CONFIG_FILE, META_FILE, WEIGHTS_FILE, check_name
from app.registry.validate import parse_json_object, too_large
from app.tasks import canonical_task
from app.untrusted import check_text, check_tree

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])
_READ = [Depends(require("predict"))]
_MANAGE = [Depends(require("manage"))]
_FIELDS = {"name", "task", "labels", "base_fingerprint"}
_FILES = {CONFIG_FILE, WEIGHTS_FILE, META_FILE}
# Text fields (name, task, labels) are small; files stream to disk and count against the
# upload limit.
_MAX_FIELD_BYTES = 1024 * 1024


class PinRequest(BaseModel):
    """PATCH body."""

    model_config = ConfigDict(extra="forbid", strict=True)  # "yes" is not true
    pinned: bool


_ONE = "#/paths/~1v1~1adapters~1{name}"


def _links(status: int, *, name: str, **targets: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI links from a response to the operations on the adapter it names, so stateful
    clients (and schemathesis' stateful runs) can chain list -> read -> pin/predict -> delete.
    `targets` maps a link name to `operation[?version]`; the name comes from `name`."""
    links: dict[str, Any] = {}
    for link, target in targets.items():
        operation, _, version = target.partition("?")
        parameters = {"name": name, **({"version": version} if version else {})}
        links[link] = {"operationRef": f"{_ONE}{operation}", "parameters": parameters}
    return {status: {"description": "Successful Response", "links": links}}


_LIST = _links(
    200,
    name="$response.body#/data/0/name",
    GetFirst="/get",
    PredictFirst="~1predict/post",
    DeleteFirst="/delete",
)
_GET = _links(
    200,
    name="$response.body#/name",
    Pin="/patch",
    PredictLatest="~1predict/post?$response.body#/latest_version",
    DownloadLatest="~1download/get?$response.body#/latest_version",
    DeleteLatest="/delete?$response.body#/latest_version",
    DeleteAll="/delete",
)
_DELETE = _links(200, name="$response.body#/name", GetAfterDelete="/get")
_PIN = _links(200, name="$response.body#/name", GetPinned="/get", Delete="/delete")
_ZIP: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}
}


@router.get("", response_model=AdapterList, dependencies=_READ, responses=_LIST)
async def list_adapters(runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    """Every adapter (this key may use) with its latest version's metadata and residency."""
    items = await run_in_threadpool(runtime.adapter_summaries)
    if principal.adapters is not None:
        items = [item for item in items if item["name"] in principal.adapters]
    return {"data": items}


@router.get("/{name}", response_model=AdapterDetails, dependencies=_READ, responses=_GET)
async def get_adapter(name: str, runtime: RuntimeDep) -> dict[str, Any]:
    """Details, all versions, metrics and lineage."""
    return await run_in_threadpool(runtime.adapter_details, check_name(name))


def _upload_body() -> dict[str, Any]:
    """The multipart body `upload_adapter` parses by hand, for the OpenAPI (and so for Swagger
    and generated clients, which cannot upload without it)."""
    text = {"type": "string"}
    binary = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
    properties = {
        "name": {**text, "description": "adapter name; an existing name gets its next version"},
        "task": {**text, "description": "classification (default), regression, ..."},
        "labels": {**text, "description": 'JSON list of label names in head order, ["neg", "pos"]'},
        "base_fingerprint": {**text, "description": "refused unless it is this service's base"},
        CONFIG_FILE: {**binary, "description": "PEFT adapter_config.json"},
        WEIGHTS_FILE: {**binary, "description": "PEFT adapter_model.safetensors"},
        META_FILE: {**binary, "description": "optional metadata (task, labels, metrics, lineage)"},
    }
    required = ["name", CONFIG_FILE, WEIGHTS_FILE]
    schema = {"type": "object", "required": required, "properties": properties}
    content = {"multipart/form-data": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


_FORM = _upload_body()
# The upload's principal comes from its `manage` requirement (a parameter rather than the
# decorator's `dependencies`, resolved first all the same).
ManagerDep = Annotated[Principal, Depends(require("manage"))]


@router.post("", response_model=AdapterVersion, status_code=201, openapi_extra=_FORM)
async def upload_adapter(
    principal: ManagerDep, request: Request, registry: RegistryDep, settings: SettingsDep
) -> dict[str, Any]:
    """Multipart upload; checked against the base before anything is stored."""
    form = await request.form(
        max_files=len(_FILES), max_fields=len(_FIELDS), max_part_size=_MAX_FIELD_BYTES
    )
    try:
        parts = await _read_parts(form, settings.max_upload_bytes)
    finally:
        await form.close()
    name = check_name(_text(parts, "name") or "")
    principal.check_adapter(name)
    meta: dict[str, Any] = {}
    if META_FILE in parts:
        meta = parse_json_object(parts[META_FILE], what=META_FILE, param=META_FILE)
    task = canonical_task(_text(parts, "task") or str(meta.get("task") or "classification"))
    labels = parse_labels(_text(parts, "labels")) if "labels" in parts else meta.get("labels", [])
    check_tree(labels, param="labels")  # JSON escapes may spell lone surrogates
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise bad_request("invalid_labels", "labels must be a list of strings", param="labels")
    if "base_fingerprint" in parts:
        meta["base_fingerprint"] = _text(parts, "base_fingerprint")
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if required not in parts:
            raise bad_request("missing_file", f"multipart upload lacks {required}", param=required)
    keep: dict[str, Any] = {
        k: meta[k] for k in ("base_fingerprint", "metrics", "description") if k in meta
    }
    lineage = meta.get("lineage") or {}
    if not isinstance(lineage, dict):
        raise bad_request(
            "invalid_metadata", f"{META_FILE} field 'lineage' must be an object", param=META_FILE
        )
    keep["lineage"] = {"source": "upload", **lineage}
    # What was stored, not a re-read: a concurrent DELETE may already have removed it.
    stored: dict[str, Any] = await run_in_threadpool(
        registry.register_version,
        name,
        config_bytes=parts[CONFIG_FILE],
        weights_bytes=parts[WEIGHTS_FILE],
        task=task,
        labels=labels,
        meta=keep,
    )
    return stored


async def _read_parts(form: FormData, limit: int) -> dict[str, bytes]:
    parts: dict[str, bytes] = {}
    total = 0
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            field = key if key in _FILES else (value.filename or key)
            if field not in _FILES:
                raise bad_request("unexpected_file", f"unexpected file {field!r}", param=field)
            data = await value.read(limit + 1)
        else:
            field, data = key, value.encode()
            if field not in _FIELDS:
                raise bad_request("unexpected_field", f"unexpected field {field!r}", param=field)
        if field in parts:
            raise bad_request("duplicate_field", f"field {field!r} given twice", param=field)
        total += len(data)
        if total > limit:
            raise too_large("upload", total, limit, field)
        parts[field] = data
    return parts


def _text(parts: dict[str, bytes], key: str) -> str | None:
    raw = parts.get(key)
    if raw is None:
        return None
    try:
        return check_text(raw.decode("utf-8"), param=key)
    except UnicodeDecodeError as exc:
        raise bad_request("invalid_text", f"{key} is not UTF-8 text", param=key) from exc


@router.get("/{name}/download", response_class=Response, dependencies=_MANAGE, responses=_ZIP)
async def download_adapter(
    name: str, registry: RegistryDep, version: int | None = None
) -> Response:
    """Zip of the PEFT folder; loads with plain `PeftModel.from_pretrained`."""
    resolved, data = await run_in_threadpool(registry.archive, check_name(name), version)
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}-v{resolved}.zip"'},
    )


@router.delete(
    "/{name}",
    response_model=AdapterDeleted,
    dependencies=_MANAGE,
    responses=_DELETE,
    response_model_exclude_unset=True,
)
async def delete_adapter(
    name: str, runtime: RuntimeDep, version: int | None = None, cascade: bool = False
) -> dict[str, Any]:
    """Remove all versions (or one); in-flight batches keep their copy until they finish.

    Concurrent deletes of one name: one gets the versions, the others a 404. Adapters stacked
    on what goes (`base_adapter`) make it a 409 naming them, unless `?cascade=true`, which
    deletes them (all their versions) too.
    """
    removed = await run_in_threadpool(
        partial(runtime.delete_tree, cascade=cascade), check_name(name), version
    )
    return removed.as_json(name)


@router.patch("/{name}", response_model=AdapterSummary, dependencies=_MANAGE, responses=_PIN)
async def patch_adapter(name: str, body: PinRequest, runtime: RuntimeDep) -> dict[str, Any]:
    """`{"pinned": true}` keeps the latest version resident on the device."""
    return await run_in_threadpool(runtime.pin_adapter, check_name(name), body.pinned)
