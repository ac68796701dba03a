"""Liveness, readiness, service info and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from app.api.auth import require
from app.api.deps import BaseDep, MetricsDep, SettingsDep
from app.api.errors import ErrorBody
from app.api.responses import LiveStatus, ReadyStatus, ServiceInfo
from app.registry.weights import PEFT_TYPES
from app.tasks import DECODER_TASKS, ENCODER_TASKS

router = APIRouter(tags=["health"])
_ANY = [Depends(require("any"))]


@router.get("/health/live", response_model=LiveStatus)
async def live() -> dict[str, str]:
    """200 while the process runs."""
    return {"status": "live"}


_NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "loading or draining"}
}


@router.get("/health/ready", response_model=ReadyStatus, responses=_NOT_READY)
async def ready(request: Request) -> JSONResponse:
    """200 once the base is loaded and warmed up; 503 before that and while draining."""
    state = getattr(request.app.state, "readiness", "starting")
    if state == "ready":
        return JSONResponse({"status": "ready"})
    body = {
        "error": {"code": f"not_ready_{state}", "message": f"service is {state}", "param": None}
    }
    return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})


@router.get("/v1/info", response_model=ServiceInfo, dependencies=_ANY)
async def info(base: BaseDep, settings: SettingsDep) -> dict[str, Any]:
    """The base model, what it can do, and the limits callers must respect."""
    return {
        "base_model": {
            "name": base.name,
            "kind": base.kind,
            "architecture": type(base.model).__name__,
            "fingerprint": base.fingerprint,
            "parameters": base.parameter_count,
            "device": str(base.device),
            "dtype": str(base.dtype).removeprefix("torch."),
            # An int8 base keeps float weights (training reads them); serving runs int8 kernels.
            "linear_kernels": "int8"
            if base.int8_layers
            else str(base.dtype).removeprefix("torch."),
            "hidden_size": base.hidden_size,
            "num_layers": base.num_layers,
        },
        "methods": sorted(PEFT_TYPES.values()),
        "tasks": list(DECODER_TASKS if base.kind == "decoder" else ENCODER_TASKS),
        "limits": {
            "max_rank": settings.max_rank,
            "max_upload_bytes": settings.max_upload_bytes,
            "max_body_bytes": settings.max_body_bytes,
            "max_inputs_per_request": settings.max_inputs_per_request,
            "max_input_tokens": settings.max_input_tokens,
            "truncate_inputs": settings.truncate_inputs,
            "max_new_tokens": settings.max_new_tokens,
            "max_prompt_tokens": settings.max_prompt_tokens,
            "max_batch_size": settings.max_batch_size,
            "queue_size": settings.queue_size,
            "max_slots": settings.max_slots,
            "device_bytes": settings.device_bytes,
            "cpu_bytes": settings.cpu_bytes,
            "request_timeout_s": settings.request_timeout_s,
        },
    }


_PROMETHEUS: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}}
}


@router.get("/metrics", response_class=Response, responses=_PROMETHEUS, dependencies=_ANY)
async def metrics(m: MetricsDep) -> Response:
    """Prometheus text format."""
    return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
