"""The official `openai` SDK against live tiny services: models, embeddings (float, base64,
dimensions), streamed completions and chat, API keys, and the SDK's typed errors."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from app.config import Settings
from app.runtime.generation import DecoderEngine, GenerateRequest
from tests.conftest import peft_adapter
from tests.unit.api.openai_live import (
    PARENT,
    decoder_service,
    decoder_settings,
    encoder_service,
    sdk,
    sdk_extra,
)
from tests.unit.client.live import tiny_base
from tests.unit.tiny_decoder import tiny_llama, tiny_tokenizer

ADMIN, LIMITED, TRAINER = "admin-key-0123456789", "limited-key-0123456789", "train-key-0123456789"
KEYS = {
    ADMIN: ["admin"],
    LIMITED: {"scopes": ["predict"], "adapters": ["sst2"]},
    TRAINER: ["train"],
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny matrices: a second thread only adds hand-off cost, badly so on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    return tiny_llama(tok)


@pytest.fixture(scope="module")
def decoder(
    model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    settings = decoder_settings(tmp_path_factory.mktemp("decoder"))
    with decoder_service(model, tok, settings) as url:
        yield url


@pytest.fixture(scope="module")
def encoder(
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("encoder")
    files = peft_adapter(tiny_bert_dir, r=4, out=tmp / "adapter")
    settings = Settings(
        store=tmp / "store",
        database_url=f"sqlite:///{tmp}/db.sqlite",
        max_wait_ms=1.0,
        api_keys=KEYS,
        _env_file=None,
    )
    with encoder_service(tiny_base(tiny_bert_dir, tokenizer), settings, files) as url:
        yield url


@pytest.fixture
def slow_engine(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Each decode step takes 50 ms more (the worker looks `tick` up on every step); the
    event is set once a job reached the engine."""
    original = DecoderEngine.tick
    started = threading.Event()

    def slow_tick(engine: DecoderEngine, new: list[GenerateRequest]) -> list[GenerateRequest]:
        if engine.busy or new:
            started.set()
            time.sleep(0.05)
        return original(engine, new)

    monkeypatch.setattr(DecoderEngine, "tick", slow_tick)
    return started


# ---------------------------------------------------------------- models
def test_models_list_the_base_and_every_adapter_with_lineage(decoder: str) -> None:
    client = sdk(decoder)
    models = {m.id: m for m in client.models.list()}
    assert list(models) == ["_base", "words", "words-child"]
    for m in models.values():
        assert m.object == "model" and m.owned_by == "switchyard"
        assert isinstance(m.created, int) and m.created > 0
    base = sdk_extra(models["_base"])["switchyard"]
    assert base["kind"] == "base" and base["base_model"] == "tiny-llama"
    child = sdk_extra(client.models.retrieve("words-child"))["switchyard"]
    assert child["kind"] == "adapter" and child["task"] == "generation"
    assert child["method"] == "lora" and child["latest_version"] == 1
    assert child["parent"] == PARENT and child["versions"][0]["parent"] == PARENT
    assert child["base_fingerprint"] == base["base_fingerprint"]
    assert sdk_extra(models["words"])["switchyard"]["parent"] is None


def test_unknown_model_is_not_found_in_our_error_shape(decoder: str) -> None:
    for model_id in ("nope", "Not A Name"):
        with pytest.raises(openai.NotFoundError) as err:
            sdk(decoder).models.retrieve(model_id)
        assert err.value.body == {
            "code": "model_not_found",
            "message": f"no model with id {model_id!r}",
            "param": "model",
        }


def test_keys_see_only_their_adapters_and_need_their_scope(encoder: str) -> None:
    assert [m.id for m in sdk(encoder, ADMIN).models.list()] == ["_base", "other", "sst2"]
    limited = sdk(encoder, LIMITED)
    assert [m.id for m in limited.models.list()] == ["_base", "sst2"]
    assert limited.models.retrieve("_base").id == "_base"
    with pytest.raises(openai.PermissionDeniedError) as err:
        limited.models.retrieve("other")
    assert err.value.code == "adapter_forbidden"
    with pytest.raises(openai.PermissionDeniedError) as err:
        sdk(encoder, TRAINER).models.list()
    assert err.value.code == "insufficient_scope"
    with pytest.raises(openai.AuthenticationError):
        sdk(encoder, "wrong-key-0123456789").models.list()


# ---------------------------------------------------------------- embeddings
def test_embeddings_float_and_base64_agree(encoder: str) -> None:
    client = sdk(encoder, ADMIN)
    texts = ["a fine film", "an awful film", "hello"]
    floats = client.embeddings.create(model="_base", input=texts, encoding_format="float")
    packed = client.embeddings.create(model="_base", input=texts)  # the SDK asks for base64
    assert [d.index for d in floats.data] == [0, 1, 2]
    assert floats.usage.prompt_tokens > 0 and floats.model == "tiny-bert"
    for f, p in zip(floats.data, packed.data, strict=True):
        assert len(f.embedding) == 32
        assert np.allclose(f.embedding, p.embedding, atol=1e-6)
        assert math.isclose(float(np.linalg.norm(f.embedding)), 1.0, rel_tol=1e-5)
    raw = httpx.post(
        f"{encoder}/v1/embeddings",
        headers={"Authorization": f"Bearer {ADMIN}"},
        json={"input": "hello", "encoding_format": "base64"},
    ).json()
    decoded = np.frombuffer(__import__("base64").b64decode(raw["data"][0]["embedding"]), "<f4")
    assert np.allclose(decoded, floats.data[2].embedding, atol=1e-7)
    single = client.embeddings.create(model="tiny-bert", input="hello", encoding_format="float")
    assert np.allclose(single.data[0].embedding, floats.data[2].embedding, atol=1e-6)


def test_embeddings_dimensions_truncate_and_renormalize(encoder: str) -> None:
    client = sdk(encoder, ADMIN)
    full = client.embeddings.create(model="_base", input="hello", encoding_format="float")
    short = client.embeddings.create(model="_base", input="hello", dimensions=8)
    head = np.asarray(full.data[0].embedding[:8])
    assert len(short.data[0].embedding) == 8
    assert np.allclose(short.data[0].embedding, head / np.linalg.norm(head), atol=1e-6)
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="_base", input="hello", dimensions=33)
    assert err.value.code == "invalid_dimensions" and "33 > the embedding width 32" in str(
        err.value
    )


def test_embeddings_with_an_adapter_and_refused_inputs(encoder: str) -> None:
    client = sdk(encoder, ADMIN)
    base = client.embeddings.create(model="_base", input="hello", encoding_format="float")
    tuned = client.embeddings.create(model="sst2", input="hello", encoding_format="float")
    assert tuned.model == "sst2"
    assert not np.allclose(base.data[0].embedding, tuned.data[0].embedding, atol=1e-4)
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="_base", input=[[101, 102]])
    assert err.value.code == "unsupported_input" and err.value.param == "input"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="missing", input="hello")
    with pytest.raises(openai.PermissionDeniedError):
        sdk(encoder, LIMITED).embeddings.create(model="other", input="hello")


# ---------------------------------------------------------------- streaming
def test_streamed_completion_adds_up_to_the_plain_one(decoder: str) -> None:
    client = sdk(decoder)
    for stop in (None, ["o"]):
        plain = client.completions.create(
            model="_base", prompt="hello world", max_tokens=16, stop=stop
        )
        chunks = list(
            client.completions.create(
                model="_base",
                prompt="hello world",
                max_tokens=16,
                stop=stop,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text_chunks = [c for c in chunks if c.choices]
        assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
        assert "".join(c.choices[0].text for c in text_chunks) == plain.choices[0].text
        assert [c.choices[0].finish_reason for c in text_chunks][-1] == plain.choices[
            0
        ].finish_reason
        assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
        assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert len(text_chunks) > 2  # text came token by token, not as one block


def test_streamed_chat_adds_up_to_the_plain_one(decoder: str) -> None:
    client = sdk(decoder)
    messages: Any = [{"role": "user", "content": "name: alice, age:"}]
    plain = client.chat.completions.create(model="words", messages=messages, max_tokens=12)
    chunks = list(
        client.chat.completions.create(model="words", messages=messages, max_tokens=12, stream=True)
    )
    assert all(c.object == "chat.completion.chunk" and c.model == "words" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert chunks[-1].usage is None  # no include_usage, no usage chunk


def test_the_wire_format_is_data_lines_ending_in_done(decoder: str) -> None:
    body = {"prompt": ["hello", "the quick"], "max_tokens": 6, "stream": True}
    with httpx.stream("POST", f"{decoder}/v1/completions", json=body, timeout=30) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [e for e in reply.read().decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(e.startswith("data: ") for e in events)
    finished = {p["choices"][0]["index"] for p in payloads if p["choices"][0]["finish_reason"]}
    assert finished == {0, 1}


def test_a_client_that_leaves_cancels_its_job(decoder: str, slow_engine: threading.Event) -> None:
    body = {"prompt": "hello", "max_tokens": 32, "stream": True}
    with httpx.stream("POST", f"{decoder}/v1/completions", json=body, timeout=30) as reply:
        next(reply.iter_lines())
    cancelled = 'switchyard_requests_total{adapter="_base",status="cancelled"} 1.0'
    deadline = time.monotonic() + 10
    while cancelled not in httpx.get(f"{decoder}/metrics").text:
        assert time.monotonic() < deadline, "the stream's job was not cancelled"
        time.sleep(0.05)
    # The service stays whole: the next request is answered normally.
    assert sdk(decoder).completions.create(model="_base", prompt="hi", max_tokens=2).choices


# ---------------------------------------------------------------- typed errors
def test_bad_requests_are_bad_request_errors(decoder: str) -> None:
    client = sdk(decoder)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="_base", prompt="hi", n=2)
    assert err.value.code == "unsupported_parameter" and err.value.param == "n"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="_base", prompt="hi", max_tokens=10_000, stream=True)
    assert err.value.code == "max_new_tokens_too_large"  # checked before the stream starts
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="missing", messages=[{"role": "user", "content": "hi"}]
        )


def test_a_full_queue_is_a_rate_limit_error(
    model: LlamaForCausalLM,
    tok: PreTrainedTokenizerFast,
    tmp_path: Path,
    slow_engine: threading.Event,
) -> None:
    """queue_size 1: while one streamed row decodes (slowed down), a second request is a 429."""
    with decoder_service(model, tok, decoder_settings(tmp_path, queue_size=1)) as url:
        body = {"prompt": "hello", "max_tokens": 30, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as reply:
            assert reply.status_code == 200 and slow_engine.wait(10)
            with pytest.raises(openai.RateLimitError) as err:
                sdk(url).completions.create(model="_base", prompt="hi", max_tokens=2)
            assert err.value.code == "queue_full"
            assert err.value.response.headers["retry-after"] == "1"
            reply.read()
