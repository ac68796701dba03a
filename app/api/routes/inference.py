"""Inference: predict with one adapter, several adapters over the same inputs, embeddings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import PrincipalDep, RuntimeDep
from app.api.embedding_format import (
    EncodingFormat,
    check_dimensions,
    embedding_texts,
    format_vectors,
)
from app.api.openai_schemas import EmbeddingList
from app.api.responses import MultiPredictOut, PredictOut
from app.errors import bad_request
from app.runtime.admission import BASE_LABEL
from app.runtime.runtime import Pooling, Prediction

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
    name: str, body: PredictRequest, runtime: RuntimeDep, version: int | None = None
) -> dict[str, Any]:
    """Pipeline-shaped outputs, one per input."""
    prediction = await runtime.predict(name, body.inputs, body.parameters, version)
    return _prediction(prediction)


@router.post("/v1/predict", response_model=MultiPredictOut)
async def predict_many(
    body: MultiPredictRequest, runtime: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any]:
    """Several adapters over the same inputs; head-only adapters share one base pass."""
    for name in body.adapters:
        principal.check_adapter(name)
    if len(set(body.adapters)) != len(body.adapters):
        raise bad_request("duplicate_adapter", "adapters repeat a name", param="adapters")
    predictions = await runtime.predict_many(body.adapters, body.inputs, body.parameters)
    return {"results": {p.meta.name: _prediction(p) for p in predictions}}


def _prediction(prediction: Prediction) -> dict[str, Any]:
    meta = prediction.meta
    return {"adapter": meta.name, "version": meta.version, "outputs": prediction.outputs}


@router.post("/v1/embeddings", response_model=EmbeddingList)
async def embeddings(
    body: EmbeddingsRequest, runtime: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any]:
    """Pooled hidden states of the base, or of the base with an adapter's LoRA applied."""
    texts = embedding_texts(body.input)
    base_ids = (None, runtime.base.name, BASE_LABEL)
    adapter = body.adapter or (body.model if body.model not in base_ids else None)
    check_dimensions(body.dimensions, runtime.base.hidden_size)
    if adapter is not None:
        principal.check_adapter(adapter)
    pooling = Pooling(layers=tuple(body.layers), method=body.pooling, normalize=body.normalize)
    result = await runtime.embed(texts, adapter=adapter, pooling=pooling)
    return {
        "object": "list",
        "data": format_vectors(
            result.vectors,
            dimensions=body.dimensions,
            normalize=body.normalize,
            encoding_format=body.encoding_format,
        ),
        "model": adapter or runtime.base.name,
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
    }
