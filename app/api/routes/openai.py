"""OpenAI-compatible generation, and the bare base behind the reserved adapter name `_base`.

`POST /v1/completions` and `POST /v1/chat/completions` take `model` as the adapter name; with
`model` omitted, null or `_base` they run the bare base. `_base` cannot collide with a user's
adapter (names start with a letter or digit), so `POST /v1/adapters/_base/predict` is the bare
base through the usual predict API. This router is included before the inference one so that
the fixed path wins over `/v1/adapters/{name}/predict`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import PrincipalDep, RuntimeDep
from app.api.openai_schemas import ChatCompletion, Completion
from app.api.responses import BasePredictOut
from app.api.routes.inference import PredictRequest
from app.api.routes.openai_streaming import STREAM_RESPONSES, StreamOptions, stream_response
from app.errors import bad_request
from app.registry.records import AdapterRef
from app.runtime.admission import BASE_LABEL
from app.runtime.generation import GenOutput
from app.runtime.runtime import Runtime

router = APIRouter(tags=["generation"])


class _OpenAIRequest(BaseModel):
    # OpenAI clients send many optional fields (penalties, user, ...); unknown ones are ignored.
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def parameters(self) -> dict[str, Any]:
        """Our generation parameters; greedy unless a temperature > 0 is given."""
        if self.n != 1:
            raise bad_request("unsupported_parameter", "'n' is not supported; use n=1", param="n")
        given = {
            "max_new_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop,
            "seed": self.seed,
        }
        return {k: v for k, v in given.items() if v is not None}


class CompletionRequest(_OpenAIRequest):
    """`POST /v1/completions`."""

    prompt: str | list[str] = Field(min_length=1)


class ChatCompletionRequest(_OpenAIRequest):
    """`POST /v1/chat/completions`."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


@router.post("/v1/adapters/_base/predict", response_model=BasePredictOut)
async def predict_base(body: PredictRequest, runtime: RuntimeDep) -> dict[str, Any]:
    """The bare base through the predict API: `{"generated_text"}` per input."""
    outputs = await runtime.generate(None, body.inputs, body.parameters)
    generated = [{"generated_text": out.text} for out in outputs]
    return {"adapter": BASE_LABEL, "version": None, "outputs": generated}


@router.post("/v1/completions", response_model=Completion, responses=STREAM_RESPONSES)
async def completions(
    body: CompletionRequest, runtime: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any] | Response:
    """OpenAI text completions; `model` names the adapter; `stream` sends SSE chunks."""
    key = _adapter(runtime, body.model, principal)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if body.stream:
        return _stream(runtime, key, list(prompts), body, chat=False)
    runtime.require_decoder()  # before the parameters: their 400 comes second
    outputs = await runtime.generate(key, list(prompts), body.parameters())
    choices = [
        {"index": i, "text": out.text, "finish_reason": out.finish_reason, "logprobs": None}
        for i, out in enumerate(outputs)
    ]
    return _envelope("cmpl", "text_completion", key, choices, outputs)


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=STREAM_RESPONSES)
async def chat_completions(
    body: ChatCompletionRequest, runtime: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any] | Response:
    """OpenAI chat completions through the base's chat template; `model` names the adapter."""
    key = _adapter(runtime, body.model, principal)
    params = body.parameters()
    if body.max_completion_tokens is not None:
        params["max_new_tokens"] = body.max_completion_tokens
    if body.stream:
        return _stream(runtime, key, [{"messages": body.messages}], body, chat=True, params=params)
    outputs = await runtime.generate(key, [{"messages": body.messages}], params)
    choices = [
        {
            "index": 0,
            "message": {"role": "assistant", "content": out.text},
            "finish_reason": out.finish_reason,
            "logprobs": None,
        }
        for out in outputs
    ]
    return _envelope("chatcmpl", "chat.completion", key, choices, outputs)


def _stream(
    runtime: Runtime,
    key: AdapterRef | None,
    inputs: list[Any],
    body: _OpenAIRequest,
    *,
    chat: bool,
    params: dict[str, Any] | None = None,
) -> Response:
    """Queue the request now (4xx before the response starts), then send its chunks."""
    runtime.require_decoder()
    stream = runtime.stream(key, inputs, params or body.parameters())
    usage = body.stream_options is not None and body.stream_options.include_usage
    model = key.name if key else BASE_LABEL
    return stream_response(stream, model=model, chat=chat, include_usage=usage)


def _adapter(runtime: Runtime, model: str | None, principal: PrincipalDep) -> AdapterRef | None:
    """None for the bare base; else the latest version of a generation adapter this key may use."""
    if model is not None and model != BASE_LABEL:
        principal.check_adapter(model)
    return runtime.generation_adapter(model)


def _envelope(
    prefix: str,
    kind: str,
    key: AdapterRef | None,
    choices: list[dict[str, Any]],
    outputs: list[GenOutput],
) -> dict[str, Any]:
    prompt = sum(out.prompt_tokens for out in outputs)
    completion = sum(len(out.token_ids) for out in outputs)
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": key.name if key else BASE_LABEL,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
