"""Inference: predict with one adapter, several adapters over the same inputs, embeddings."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import PrincipalDep, RegistryDep, RuntimeDep, SettingsDep
from app.api.embedding_format import (
    EncodingFormat,
    check_dimensions,
    embedding_texts,
    format_vectors,
)
from app.api.inputs import check_input_keys, check_parameter_names
from app.api.openai_schemas import EmbeddingList
from app.api.responses import MultiPredictOut, PredictOut
from app.config import Settings
from app.errors import SwitchyardError, bad_request
from app.registry.store import check_name
from app.runtime.engine import Job
from app.runtime.generation_service import BASE_LABEL
from app.runtime.runtime import Runtime
from app.tasks import EMBEDDINGS, Readout, classification, get_task

router = APIRouter(tags=["inference"])
Input = str | dict[str, Any]


class PredictRequest(BaseModel):
    """One adapter over a list of inputs."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[Input] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)


class MultiPredictRequest(PredictRequest):
    """Several adapters over the same inputs."""

    adapters: list[str] = Field(min_length=1, max_length=64)


class EmbeddingsRequest(BaseModel):
    """OpenAI-style embeddings, with optional adapter, layers and pooling."""

    model_config = ConfigDict(extra="forbid")
    # Token-id arrays pass the schema so that the route can refuse them with a clear 400.
    input: str | list[str] | list[int] | list[list[int]]
    adapter: str | None = None
    model: str | None = None  # OpenAI clients send it; an adapter name when it is not the base
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None  # OpenAI's end-user id; accepted, unused
    layers: list[int] = Field(default_factory=lambda: [-1], min_length=1, max_length=64)
    pooling: str = Field("mean", pattern="^(mean|cls|max)$")
    normalize: bool = True


@router.post("/v1/adapters/{name}/predict", response_model=PredictOut)
async def predict(
    name: str,
    body: PredictRequest,
    registry: RegistryDep,
    runtime: RuntimeDep,
    settings: SettingsDep,
    version: int | None = None,
) -> dict[str, Any]:
    """Pipeline-shaped outputs, one per input."""
    meta = registry.meta(check_name(name), version)
    outputs = await _run(name, meta, body.inputs, body.parameters, runtime, settings)
    return {"adapter": name, "version": meta["version"], "outputs": outputs}


@router.post("/v1/predict", response_model=MultiPredictOut)
async def predict_many(
    body: MultiPredictRequest,
    registry: RegistryDep,
    runtime: RuntimeDep,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> dict[str, Any]:
    """Several adapters over the same inputs; head-only adapters share one base pass."""
    for name in body.adapters:
        principal.check_adapter(name)
    if len(set(body.adapters)) != len(body.adapters):
        raise bad_request("duplicate_adapter", "adapters repeat a name", param="adapters")
    metas = [registry.meta(check_name(name)) for name in body.adapters]
    if runtime.base.kind == "encoder":
        results = await _run_group(metas, body.inputs, body.parameters, runtime, settings)
    else:
        results = await asyncio.gather(
            *(_run(m["name"], m, body.inputs, body.parameters, runtime, settings) for m in metas)
        )
    return {
        "results": {
            m["name"]: {"adapter": m["name"], "version": m["version"], "outputs": out}
            for m, out in zip(metas, results, strict=True)
        }
    }


async def _run_group(
    metas: list[dict[str, Any]],
    inputs: list[Input],
    params: dict[str, Any],
    runtime: Runtime,
    settings: Settings,
) -> list[list[Any]]:
    """One batch for all adapters, inputs tokenized once per task: identical rows of head-only
    adapters are then forwarded once by the engine."""
    check_parameter_names(params, (str(meta["task"]) for meta in metas))
    classification.check_params(params)
    rows_by_task: dict[str, list[Any]] = {}
    jobs = []
    for meta in metas:
        task = str(meta["task"])
        if task not in rows_by_task:
            rows_by_task[task] = _prepare(runtime, settings, inputs, task)
        jobs.append(
            Job(
                key=(meta["name"], int(meta["version"])),
                task=task,
                rows=rows_by_task[task],
                params=params,
            )
        )
    start = time.perf_counter()
    try:
        results = await asyncio.wait_for(
            runtime.batcher.submit_group(jobs), settings.request_timeout_s
        )
    except TimeoutError as exc:
        raise SwitchyardError(
            504, "timeout", f"no answer within request_timeout_s {settings.request_timeout_s}"
        ) from exc
    elapsed = time.perf_counter() - start
    for meta, result in zip(metas, results, strict=True):
        status = result.error.code if result.error is not None else "ok"
        runtime.metrics.requests.labels(adapter=meta["name"], status=status).inc()
        runtime.metrics.latency.labels(adapter=meta["name"]).observe(elapsed)
        if result.error is not None:
            raise result.error
    return [result.outputs or [] for result in results]


@router.post("/v1/embeddings", response_model=EmbeddingList)
async def embeddings(
    body: EmbeddingsRequest,
    registry: RegistryDep,
    runtime: RuntimeDep,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> dict[str, Any]:
    """Pooled hidden states of the base, or of the base with an adapter's LoRA applied."""
    texts = embedding_texts(body.input)
    base_ids = (None, runtime.base.name, BASE_LABEL)
    adapter = body.adapter or (body.model if body.model not in base_ids else None)
    check_dimensions(body.dimensions, runtime.base.hidden_size)
    key = None
    if adapter is not None:
        principal.check_adapter(adapter)
        meta = registry.meta(check_name(adapter))
        key = (adapter, int(meta["version"]))
    for layer in body.layers:
        if not -runtime.base.num_layers - 1 <= layer <= runtime.base.num_layers:
            raise bad_request("invalid_layer", f"layer {layer} is out of range", param="layers")
    params = {"layers": body.layers, "pooling": body.pooling, "normalize": body.normalize}
    rows = _prepare(runtime, settings, texts, EMBEDDINGS)
    vectors = await _submit(
        runtime,
        settings,
        Job(key=key, task=EMBEDDINGS, rows=rows, params=params),
        label=adapter or "_base",
    )
    return {
        "object": "list",
        "data": format_vectors(
            vectors,
            dimensions=body.dimensions,
            normalize=body.normalize,
            encoding_format=body.encoding_format,
        ),
        "model": adapter or runtime.base.name,
        "usage": {
            "prompt_tokens": sum(len(r.input_ids) for r in rows),
            "total_tokens": sum(len(r.input_ids) for r in rows),
        },
    }


async def _run(
    name: str,
    meta: dict[str, Any],
    inputs: list[Input],
    params: dict[str, Any],
    runtime: Runtime,
    settings: Settings,
) -> list[Any]:
    task = str(meta["task"])
    if get_task(task).readout is Readout.TEXT:
        generate = getattr(runtime, "generate", None)
        if generate is None:
            raise bad_request("unsupported_task", "this base cannot generate", param="name")
        outputs: list[Any] = await generate(name, int(meta["version"]), inputs, params)
        return outputs
    check_parameter_names(params, [task])
    classification.check_params(params)
    rows = _prepare(runtime, settings, inputs, task)
    job = Job(key=(name, int(meta["version"])), task=task, rows=rows, params=params)
    return await _submit(runtime, settings, job, label=name)


def _prepare(runtime: Runtime, settings: Settings, inputs: list[Any], task: str) -> list[Any]:
    if len(inputs) > settings.max_inputs_per_request:
        raise SwitchyardError(
            413,
            "too_many_inputs",
            f"{len(inputs)} inputs > max_inputs_per_request {settings.max_inputs_per_request}",
            param="inputs",
        )
    if runtime.base.kind != "encoder":
        raise bad_request("unsupported_task", f"task {task!r} needs an encoder base", param="task")
    check_input_keys(inputs)
    return runtime.engine.prepare(inputs, task=task)


async def _submit(runtime: Runtime, settings: Settings, job: Job, *, label: str) -> list[Any]:
    start = time.perf_counter()
    status = "ok"
    try:
        return await asyncio.wait_for(runtime.batcher.submit(job), settings.request_timeout_s)
    except TimeoutError as exc:
        status = "timeout"
        raise SwitchyardError(
            504, "timeout", f"no answer within request_timeout_s {settings.request_timeout_s}"
        ) from exc
    except SwitchyardError as exc:
        status = exc.code
        raise
    finally:
        runtime.metrics.requests.labels(adapter=label, status=status).inc()
        runtime.metrics.latency.labels(adapter=label).observe(time.perf_counter() - start)
