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

from app.api.auth import Principal
from app.api.deps import PrincipalDep, RegistryDep, RuntimeDep
from app.api.openai_schemas import ChatCompletion, Completion
from app.api.responses import BasePredictOut
from app.api.routes.inference import PredictRequest
from app.api.routes.openai_streaming import STREAM_RESPONSES, StreamOptions, stream_response
from app.errors import bad_request
from app.registry.catalog import Registry
from app.registry.store import check_name
from app.runtime.cache import Key
from app.runtime.generation import GenOutput
from app.runtime.generation_service import BASE_LABEL, GenerationService
from app.runtime.runtime import Runtime
from app.tasks import TASKS, Readout

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
    outputs = await _service(runtime).generate(None, body.inputs, body.parameters)
    return {"adapter": BASE_LABEL, "version": None, "outputs": outputs}


@router.post("/v1/completions", response_model=Completion, responses=STREAM_RESPONSES)
async def completions(
    body: CompletionRequest, registry: RegistryDep, runtime: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any] | Response:
    """OpenAI text completions; `model` names the adapter; `stream` sends SSE chunks."""
    key = _adapter_key(registry, body.model, principal)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if body.stream:
        return _stream(runtime, key, list(prompts), body, chat=False)
    outputs = await _service(runtime).complete(key, list(prompts), body.parameters())
    choices = [
        {"index": i, "text": out.text, "finish_reason": out.finish_reason, "logprobs": None}
        for i, out in enumerate(outputs)
    ]
    return _envelope("cmpl", "text_completion", key, choices, outputs)


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=STREAM_RESPONSES)
async def chat_completions(
    body: ChatCompletionRequest, registry: RegistryDep, runtime: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any] | Response:
    """OpenAI chat completions through the base's chat template; `model` names the adapter."""
    key = _adapter_key(registry, body.model, principal)
    params = body.parameters()
    if body.max_completion_tokens is not None:
        params["max_new_tokens"] = body.max_completion_tokens
    if body.stream:
        return _stream(runtime, key, [{"messages": body.messages}], body, chat=True, params=params)
    outputs = await _service(runtime).complete(key, [{"messages": body.messages}], params)
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
    key: Key | None,
    inputs: list[Any],
    body: _OpenAIRequest,
    *,
    chat: bool,
    params: dict[str, Any] | None = None,
) -> Response:
    """Queue the job now (4xx before the response starts), then send its chunks."""
    stream = _service(runtime).stream(key, inputs, params or body.parameters())
    usage = body.stream_options is not None and body.stream_options.include_usage
    model = key[0] if key else BASE_LABEL
    return stream_response(stream, model=model, chat=chat, include_usage=usage)


def _service(runtime: Runtime) -> GenerationService:
    if runtime.generation is None:
        raise bad_request("unsupported_task", "generation needs a decoder base", param="model")
    return runtime.generation


def _adapter_key(registry: Registry, model: str | None, principal: Principal) -> Key | None:
    """None for the bare base; else the latest version of a generation adapter."""
    if model is None or model == BASE_LABEL:
        return None
    principal.check_adapter(model)
    meta = registry.meta(check_name(model))
    task = TASKS.get(str(meta.get("task")))
    if task is None or task.readout is not Readout.TEXT:
        raise bad_request(
            "unsupported_task",
            f"adapter {model!r} is a {meta.get('task')} adapter, not generation",
            param="model",
        )
    return (model, int(meta["version"]))


def _envelope(
    prefix: str, kind: str, key: Key | None, choices: list[dict[str, Any]], outputs: list[GenOutput]
) -> dict[str, Any]:
    prompt = sum(out.prompt_tokens for out in outputs)
    completion = sum(len(out.token_ids) for out in outputs)
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": key[0] if key else BASE_LABEL,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
