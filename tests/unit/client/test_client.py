"""`app.client.Client` against a live tiny-model service over a real socket: every method,
typed answers equal to the raw JSON, errors with the API's code and param, retries on 429."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerBase

from app.client import (
    NO_RETRY,
    AdapterVersion,
    BadRequestError,
    Client,
    ConflictError,
    EvaluationEvent,
    LossEvent,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
    StatusEvent,
    UnprocessableEntityError,
)
from app.config import Settings
from app.runtime.engine import EncoderEngine, EncodeRequest, EncodeResult
from tests.conftest import peft_adapter
from tests.unit.client.live import LONG_HP, TINY_HP, job_rows, live_service, tiny_base
from tests.unit.peft_reference import as_vector, peft_logits, peft_model

LABELS = ["neg", "pos"]
TEXTS = ["what a wonderful day", "this is terrible"]


@pytest.fixture(scope="module")
def folder(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter saved by plain PEFT (it also writes a README.md the upload leaves out)."""
    out = tmp_path_factory.mktemp("client") / "peft"
    peft_adapter(tiny_bert_dir, r=4, out=out)
    return out


def make_settings(root: Path, **overrides: Any) -> Settings:
    return Settings(store=root / "store", max_wait_ms=1.0, _env_file=None, **overrides)


@pytest.fixture(scope="module")
def url(
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    settings = make_settings(tmp_path_factory.mktemp("svc"))
    with live_service(settings, tiny_base(tiny_bert_dir, tokenizer)) as address:
        yield address


@pytest.fixture(scope="module")
def sy(url: str) -> Iterator[Client]:
    with Client(url) as client:
        yield client


@pytest.fixture(scope="module")
def raw(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client


# ---------------------------------------------------------------- service
def test_info_health_and_metrics(sy: Client) -> None:
    info = sy.info()
    assert info.base_model.name == "tiny-bert" and info.base_model.fingerprint.startswith("sha256:")
    assert "lora" in info.methods and "classification" in info.tasks
    assert info.limits["max_rank"] == 64
    assert (sy.live().status, sy.ready().status) == ("live", "ready")
    assert "switchyard_requests" in sy.metrics()


# ---------------------------------------------------------------- adapters
def test_upload_predict_and_download_round_trip(
    sy: Client,
    raw: httpx.Client,
    folder: Path,
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path: Path,
) -> None:
    created = sy.upload_adapter("rt", folder, labels=LABELS)
    assert isinstance(created, AdapterVersion)
    assert (created.version, created.method, created.task, created.labels) == (
        1,
        "lora",
        "classification",
        LABELS,
    )
    assert created.lineage["source"] == "upload"
    listed = {a.name: a for a in sy.list_adapters()}
    assert listed["rt"].latest_version == 1 and listed["rt"].size_bytes > 0
    assert listed["rt"].resident in ("device", "cpu", "disk")
    card = sy.get_model("rt")
    assert card.switchyard["kind"] == "adapter" and card.switchyard["latest_version"] == 1
    assert "rt" in {m.id for m in sy.list_models()}
    details = sy.get_adapter("rt")
    assert [v.version for v in details.versions] == [1]
    assert details.model_dump(exclude_none=True) == raw.get("/v1/adapters/rt").json()

    prediction = sy.predict("rt", TEXTS, parameters={"top_k": None})
    wire = raw.post(
        "/v1/adapters/rt/predict", json={"inputs": TEXTS, "parameters": {"top_k": None}}
    ).json()
    assert prediction.model_dump() == wire and prediction.version == 1
    assert sy.predict("rt", TEXTS, version=1).outputs[0][0]["label"] in LABELS

    files = sy.download_adapter("rt", tmp_path / "pulled")
    assert sorted(p.name for p in files) >= ["adapter_config.json", "adapter_model.safetensors"]
    pulled = load_file(tmp_path / "pulled" / "adapter_model.safetensors")
    original = load_file(folder / "adapter_model.safetensors")
    assert pulled.keys() == original.keys()
    assert all(torch.equal(pulled[k], original[k]) for k in original)
    # The pulled folder loads with plain PEFT and computes what the service served.
    reference = torch.softmax(
        peft_logits(peft_model(tiny_bert_dir, tmp_path / "pulled", 2), tokenizer, TEXTS), dim=-1
    )
    served = torch.stack([as_vector(o, LABELS) for o in prediction.outputs])
    assert torch.allclose(served, reference, atol=1e-4)


def test_predict_many_pin_unpin_and_delete(sy: Client, folder: Path) -> None:
    sy.upload_adapter("pa", folder, labels=LABELS)
    sy.upload_adapter("pb", folder, labels=["x", "y"])
    assert sy.upload_adapter("pb", folder, labels=["x", "y"]).version == 2
    many = sy.predict_many(["pa", "pb"], TEXTS)
    assert set(many.results) == {"pa", "pb"} and many.results["pb"].version == 2
    assert many.results["pa"].outputs == sy.predict("pa", TEXTS).outputs
    pinned = sy.pin_adapter("pa")
    assert pinned.pinned is True and pinned.resident == "device"
    assert sy.unpin_adapter("pa").pinned is False
    assert sy.delete_adapter("pb", version=2).deleted_versions == [2]
    assert sy.get_adapter("pb").latest_version == 1
    assert sy.delete_adapter("pb").deleted_versions == [1]
    with pytest.raises(NotFoundError) as caught:
        sy.get_adapter("pb")
    assert (caught.value.status, caught.value.code, caught.value.param) == (
        404,
        "adapter_not_found",
        "name",
    )
    assert "pb" in caught.value.message


def test_upload_errors(sy: Client, folder: Path, tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_bytes((folder / "adapter_config.json").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"adapter_model\.safetensors"):
        sy.upload_adapter("half", tmp_path)  # refused before anything is sent
    with pytest.raises(BadRequestError) as caught:
        sy.upload_adapter("Bad Name", folder, labels=LABELS)
    assert caught.value.code == "invalid_name" and caught.value.param == "name"
    with pytest.raises(BadRequestError) as caught:
        sy.upload_adapter("three", folder, labels=["a", "b", "c"])  # the head has 2 rows
    assert caught.value.status == 400 and caught.value.message
    assert "three" not in {a.name for a in sy.list_adapters()}


# ---------------------------------------------------------------- datasets
def test_datasets_from_a_path_and_from_rows(sy: Client, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in job_rows(10)))
    from_file = sy.upload_dataset(path)
    assert (from_file.rows, from_file.task, from_file.name) == (10, "classification", "train")
    assert from_file.label_counts == {"neg": 5, "pos": 5}
    from_rows = sy.upload_dataset(job_rows(6), name="inline")
    assert (from_rows.rows, from_rows.name, from_rows.format) == (6, "inline", "jsonl")
    assert {from_file.id, from_rows.id} <= {d.id for d in sy.list_datasets()}
    assert sy.get_dataset(from_rows.id).rows == 6
    assert sy.delete_dataset(from_rows.id).deleted is True
    with pytest.raises(NotFoundError) as caught:
        sy.get_dataset(from_rows.id)
    assert caught.value.code == "dataset_not_found"


def test_bad_rows_name_their_lines(sy: Client) -> None:
    with pytest.raises(BadRequestError) as caught:
        sy.upload_dataset([{"text": "ok", "label": "a"}, {"text": 3, "label": "b"}])
    error = caught.value
    assert (error.code, error.param) == ("invalid_dataset", "file")
    assert "line 2" in error.message and error.body["details"][0]["line"] == 2
    with pytest.raises(ValueError, match="empty"):
        sy.upload_dataset([])


# ---------------------------------------------------------------- training jobs
def test_train_follow_and_inspect(sy: Client) -> None:
    data = sy.upload_dataset(job_rows(), name="jobdata")
    job = sy.create_job("trained", training_data=data.id, method="lora", hyperparameters=TINY_HP)
    assert job.status == "queued" and job.training_data == data.id and not job.done
    events = list(sy.follow(job.id))
    losses = [e for e in events if isinstance(e, LossEvent)]
    evaluations = [e for e in events if isinstance(e, EvaluationEvent)]
    steps = [e.step for e in losses]  # a loss every step (log_every_steps 1), in order
    assert len(steps) >= 2 and steps == list(range(1, len(steps) + 1))
    assert all(isinstance(e.loss, float) for e in losses)
    assert evaluations and "accuracy" in evaluations[-1].metrics
    assert isinstance(events[-1], StatusEvent) and events[-1].status == "succeeded"
    assert [e.id for e in events] == sorted(e.id for e in events)

    done = sy.get_job(job.id)
    assert done.done and done.result is not None and done.error is None
    assert (done.result.adapter, done.result.version) == ("trained", 1)
    assert done.progress.step == steps[-1] and done.progress.percent == 100.0
    assert sy.get_adapter("trained").versions[0].lineage["job_id"] == job.id
    page = sy.job_events(job.id)
    assert [e.id for e in page.data] == [e.id for e in events] and page.has_more is False
    later = list(sy.follow(job.id, after=events[2].id))  # resumes after a seen event
    assert [e.id for e in later] == [e.id for e in events[3:]]
    assert job.id in {j.id for j in sy.list_jobs(status="succeeded")}
    with pytest.raises(ConflictError) as caught:
        sy.cancel_job(job.id)
    assert (caught.value.status, caught.value.code) == (409, "job_not_cancellable")


def test_cancel_inline_examples_job(sy: Client) -> None:
    job = sy.create_job("never", examples=job_rows(), hyperparameters=LONG_HP)
    assert sy.cancel_job(job.id).status == "cancelled"
    final = sy.wait_job(job.id)
    assert final.status == "cancelled" and final.result is None
    with pytest.raises(NotFoundError):
        sy.get_adapter("never")


def test_job_errors(sy: Client) -> None:
    with pytest.raises(NotFoundError) as caught:
        sy.get_job("job_000000000000000000000000")
    assert caught.value.code and caught.value.status == 404
    with pytest.raises(NotFoundError):
        list(sy.follow("job_000000000000000000000000"))
    with pytest.raises(BadRequestError) as bad:
        sy.create_job("x", examples=job_rows(), hyperparameters={"rank": 1000})
    assert bad.value.param == "hyperparameters.rank" and "max_rank" in bad.value.message


# ---------------------------------------------------------------- inference
def test_embeddings(sy: Client, raw: httpx.Client) -> None:
    out = sy.embed(["a cat", "a dog"])
    assert [e.index for e in out.data] == [0, 1] and out.model == "tiny-bert"
    vector = torch.tensor(out.data[0].embedding)
    assert vector.shape == (32,) and abs(float(vector.norm()) - 1.0) < 1e-4
    assert out.usage.prompt_tokens > 0
    cls = sy.embed("a cat", pooling="cls", normalize=False, layers=[-2])
    wire = raw.post(
        "/v1/embeddings",
        json={"input": "a cat", "pooling": "cls", "normalize": False, "layers": [-2]},
    ).json()
    assert cls.data[0].embedding == wire["data"][0]["embedding"]
    with pytest.raises(BadRequestError) as caught:
        sy.embed("x", layers=[99])
    assert (caught.value.code, caught.value.param) == ("invalid_layer", "layers")


def test_generation_on_an_encoder_base_is_a_400(sy: Client) -> None:
    with pytest.raises(BadRequestError) as caught:
        sy.complete("hello", max_tokens=4)
    assert (caught.value.code, caught.value.param) == ("unsupported_task", "model")
    with pytest.raises(BadRequestError):
        sy.chat([{"role": "user", "content": "hi"}])


def test_schema_errors_are_422_with_the_field(sy: Client, folder: Path) -> None:
    sy.upload_adapter("schema", folder, labels=LABELS)
    with pytest.raises(UnprocessableEntityError) as caught:
        sy.predict("schema", [])
    assert (caught.value.status, caught.value.code, caught.value.param) == (
        422,
        "invalid_request",
        "inputs",
    )


# ---------------------------------------------------------------- retries
class SlowEngine:
    """`EncoderEngine.run` slowed down, so that a small queue fills and the service answers 429."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay_s: float) -> None:
        original = EncoderEngine.run

        def run(engine: EncoderEngine, jobs: list[EncodeRequest]) -> list[EncodeResult]:
            time.sleep(delay_s)
            return original(engine, jobs)

        monkeypatch.setattr(EncoderEngine, "run", run)


def test_429_is_retried_after_retry_after(
    monkeypatch: pytest.MonkeyPatch,
    folder: Path,
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path: Path,
) -> None:
    SlowEngine(monkeypatch, 0.15)
    settings = make_settings(tmp_path, queue_size=2, max_batch_size=1)
    with live_service(settings, tiny_base(tiny_bert_dir, tokenizer)) as address:
        Client(address).upload_adapter("busy", folder, labels=LABELS)

        def burst(policy: RetryPolicy) -> list[Any]:
            barrier = threading.Barrier(8)

            def one(_: int) -> Any:
                with Client(address, retry=policy) as client:
                    barrier.wait()
                    try:
                        return client.predict("busy", ["x"])
                    except RateLimitError as exc:
                        return exc

            with ThreadPoolExecutor(8) as pool:
                return list(pool.map(one, range(8)))

        refused = [r for r in burst(NO_RETRY) if isinstance(r, RateLimitError)]
        assert refused, "a queue of 2 rows should refuse some of 8 concurrent requests"
        assert {(e.status, e.code, e.retry_after) for e in refused} == {(429, "queue_full", 1.0)}
        started = time.monotonic()
        answers = burst(RetryPolicy(max_retries=20, max_wait_s=5))
        assert all(not isinstance(a, Exception) for a in answers), answers
        assert time.monotonic() - started >= 1.0  # someone waited the server's Retry-After


def test_delete_cascade_removes_stacked_children(sy: Client, folder: Path, tmp_path: Path) -> None:
    sy.upload_adapter("dom", folder, labels=LABELS)
    child = tmp_path / "child"
    shutil.copytree(folder, child)
    lineage = {"lineage": {"parent": {"adapter": "dom", "version": 1}}}
    (child / "switchyard.json").write_text(json.dumps(lineage))
    sy.upload_adapter("kid", child, labels=LABELS)
    with pytest.raises(ConflictError) as caught:
        sy.delete_adapter("dom")
    assert "'kid' v1" in str(caught.value)
    deleted = sy.delete_adapter("dom", cascade=True)
    assert deleted.deleted_versions == [1]
    assert deleted.deleted_children == [{"name": "kid", "deleted_versions": [1]}]
