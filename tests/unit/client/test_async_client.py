"""`app.client.AsyncClient` against live tiny services: the encoder (adapters, datasets, jobs
followed with `async for`, concurrent predicts), the decoder (completions and chat, also
through the sync client), and a keyed service (401/403, keys from the environment)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from transformers import PreTrainedTokenizerBase

from app.client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    EvaluationEvent,
    LossEvent,
    NotFoundError,
    PermissionDeniedError,
    StatusEvent,
)
from app.config import Settings
from tests.conftest import peft_adapter
from tests.unit.client.live import LONG_HP, TINY_HP, job_rows, live_service, tiny_base
from tests.unit.tiny_decoder import serving_base, tiny_llama, tiny_tokenizer

LABELS = ["neg", "pos"]
TEXTS = ["what a wonderful day", "this is terrible", "ok"]
KEY, PREDICT_ONLY = "k" * 16 + "-admin", "k" * 16 + "-predict"


def make_settings(root: Path, **overrides: Any) -> Settings:
    return Settings(store=root / "store", max_wait_ms=1.0, _env_file=None, **overrides)


@pytest.fixture(scope="module")
def folder(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("async") / "peft"
    peft_adapter(tiny_bert_dir, r=4, out=out)
    return out


@pytest.fixture(scope="module")
def url(
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    settings = make_settings(tmp_path_factory.mktemp("svc"))
    with live_service(settings, tiny_base(tiny_bert_dir, tokenizer)) as address:
        yield address


@pytest.mark.asyncio
async def test_adapters_round_trip(url: str, folder: Path, tmp_path: Path) -> None:
    async with AsyncClient(url) as sy:
        created = await sy.upload_adapter("aa", folder, labels=LABELS)
        assert (created.version, created.labels) == (1, LABELS)
        assert "aa" in {a.name for a in await sy.list_adapters()}
        assert (await sy.get_adapter("aa")).versions[0].method == "lora"
        prediction = await sy.predict("aa", TEXTS)
        assert len(prediction.outputs) == 3 and prediction.outputs[0][0]["label"] in LABELS
        with Client(url) as blocking:
            assert prediction == blocking.predict("aa", TEXTS)
        many = await sy.predict_many(["aa"], TEXTS)
        assert many.results["aa"].outputs == prediction.outputs
        assert (await sy.pin_adapter("aa")).pinned is True
        assert (await sy.unpin_adapter("aa")).pinned is False
        written = await sy.download_adapter("aa", tmp_path / "pulled")
        assert (tmp_path / "pulled" / "adapter_model.safetensors") in written
        assert (await sy.delete_adapter("aa")).deleted_versions == [1]
        with pytest.raises(NotFoundError) as caught:
            await sy.predict("aa", TEXTS)
        assert (caught.value.code, caught.value.param) == ("adapter_not_found", "name")


@pytest.mark.asyncio
async def test_concurrent_predicts_share_one_client(url: str, folder: Path) -> None:
    async with AsyncClient(url) as sy:
        await sy.upload_adapter("conc", folder, labels=LABELS)
        answers = await asyncio.gather(*(sy.predict("conc", [t]) for t in TEXTS * 4))
        alone = await sy.predict("conc", TEXTS)
        for index, answer in enumerate(answers):
            got = {o["label"]: o["score"] for o in answer.outputs[0]}
            want = {o["label"]: o["score"] for o in alone.outputs[index % 3]}
            assert got.keys() == want.keys()
            assert all(abs(got[k] - want[k]) < 1e-5 for k in want)


@pytest.mark.asyncio
async def test_datasets_and_a_followed_job(url: str) -> None:
    async with AsyncClient(url) as sy:
        data = await sy.upload_dataset(job_rows(), name="async-train")
        assert data.rows == 24 and data.id in {d.id for d in await sy.list_datasets()}
        assert (await sy.get_dataset(data.id)).task == "classification"
        job = await sy.create_job("async-job", training_data=data.id, hyperparameters=TINY_HP)
        events = [event async for event in sy.follow(job.id)]
        assert any(isinstance(e, LossEvent) and e.loss is not None for e in events)
        assert any(isinstance(e, EvaluationEvent) for e in events)
        last = events[-1]
        assert isinstance(last, StatusEvent) and last.status == "succeeded"
        done = await sy.wait_job(job.id)
        assert done.result is not None and done.result.version == 1
        assert [e.id for e in (await sy.job_events(job.id)).data] == [e.id for e in events]
        assert (await sy.list_jobs(limit=1))[0].id == job.id
        with pytest.raises(ConflictError):
            await sy.cancel_job(job.id)
        assert (await sy.delete_dataset(data.id)).deleted is True


@pytest.mark.asyncio
async def test_a_failed_job_carries_its_error(url: str) -> None:
    async with AsyncClient(url) as sy:
        # One worker: the blocker runs while the second job waits in the queue; its dataset
        # is then deleted, so the second job fails when it starts (dataset_not_found).
        blocker = await sy.create_job("blocker", examples=job_rows(), hyperparameters=LONG_HP)
        data = await sy.upload_dataset(job_rows(), name="gone")
        doomed = await sy.create_job("doomed", training_data=data.id, hyperparameters=TINY_HP)
        await sy.delete_dataset(data.id)
        await sy.cancel_job(blocker.id)
        events = [event async for event in sy.follow(doomed.id)]
        last = events[-1]
        assert isinstance(last, StatusEvent) and last.status == "failed"
        assert last.error is not None and last.error.code == "dataset_not_found"
        final = await sy.get_job(doomed.id)
        assert final.error is not None and final.error.param == "training_data"


# ---------------------------------------------------------------- generation on a decoder
@pytest.fixture(scope="module")
def decoder_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tok = tiny_tokenizer()
    base = serving_base(tiny_llama(tok), tok)
    with live_service(make_settings(tmp_path_factory.mktemp("dec")), base) as address:
        yield address


def _without_ids(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("id", "created")}


@pytest.mark.asyncio
async def test_completions_and_chat(decoder_url: str) -> None:
    chat = [{"role": "user", "content": "hello world"}]
    async with AsyncClient(decoder_url) as sy:
        done = await sy.complete("the quick brown", max_tokens=5)
        answer = await sy.chat(chat, max_tokens=5)
        predicted = await sy.predict("_base", ["the quick brown"], parameters={"max_new_tokens": 5})
    async with httpx.AsyncClient(base_url=decoder_url) as raw:
        wire = await raw.post(
            "/v1/completions", json={"prompt": "the quick brown", "max_tokens": 5}
        )
        wire_chat = await raw.post("/v1/chat/completions", json={"messages": chat, "max_tokens": 5})
    assert _without_ids(done.model_dump()) == _without_ids(wire.json())
    assert done.choices[0].text == predicted.outputs[0]["generated_text"]  # greedy, same base
    assert done.usage is not None and done.usage.completion_tokens is not None
    assert 0 < done.usage.completion_tokens <= 5
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == wire_chat.json()["choices"][0]["message"]["content"]
    with Client(decoder_url) as blocking:
        assert blocking.complete(["the quick brown"], max_tokens=5).choices[0].text == (
            done.choices[0].text
        )
        assert blocking.chat(chat, max_tokens=5).choices[0].message == answer.choices[0].message


@pytest.mark.asyncio
async def test_streamed_completions_add_up_to_the_unstreamed_text(decoder_url: str) -> None:
    chat = [{"role": "user", "content": "hello world"}]
    async with AsyncClient(decoder_url) as sy:
        whole = await sy.complete("the quick brown", max_tokens=6)
        chunks = [c async for c in sy.stream_complete("the quick brown", max_tokens=6)]
        answer = await sy.chat(chat, max_tokens=6)
        deltas = [c async for c in sy.stream_chat(chat, max_tokens=6)]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    text = "".join(c.choices[0].delta.content or "" for c in deltas if c.choices)
    assert text == answer.choices[0].message.content
    with Client(decoder_url) as blocking:
        again = list(blocking.stream_chat(chat, max_tokens=6))
        assert [c.choices[0].delta for c in again if c.choices] == [
            c.choices[0].delta for c in deltas if c.choices
        ]
        streamed = "".join(c.choices[0].text for c in blocking.stream_complete("the", max_tokens=3))
        assert streamed == blocking.complete("the", max_tokens=3).choices[0].text
        models = blocking.list_models()
        assert models[0].id == "_base" and models[0].switchyard["kind"] == "base"
        with pytest.raises(NotFoundError) as caught:
            blocking.get_model("nope")
        assert caught.value.code == "model_not_found"
        with pytest.raises(BadRequestError):  # refused before the stream starts
            list(blocking.stream_complete("the", max_tokens=3, n=2))


# ---------------------------------------------------------------- auth
@pytest.fixture(scope="module")
def keyed_url(
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    keys = {KEY: ["admin"], PREDICT_ONLY: ["predict"]}
    settings = make_settings(tmp_path_factory.mktemp("keyed"), api_keys=keys)
    with live_service(settings, tiny_base(tiny_bert_dir, tokenizer)) as address:
        yield address


@pytest.mark.asyncio
async def test_keys_and_scopes(
    keyed_url: str, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncClient(keyed_url) as anonymous:
        with pytest.raises(AuthenticationError) as caught:
            await anonymous.list_adapters()
        assert caught.value.status == 401
    async with AsyncClient(keyed_url, api_key=PREDICT_ONLY) as reader:
        with pytest.raises(PermissionDeniedError) as denied:
            await reader.upload_adapter("scoped", folder, labels=LABELS)
        assert denied.value.status == 403 and denied.value.message
    monkeypatch.setenv("SWITCHYARD_URL", keyed_url)
    monkeypatch.setenv("SWITCHYARD_KEY", KEY)
    async with AsyncClient() as admin:  # both from the environment
        assert (await admin.upload_adapter("scoped", folder, labels=LABELS)).version == 1
    async with AsyncClient(keyed_url, api_key=PREDICT_ONLY) as reader:
        assert len((await reader.predict("scoped", TEXTS)).outputs) == 3
