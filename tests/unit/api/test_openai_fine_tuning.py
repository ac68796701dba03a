"""OpenAI's fine-tuning flow with the official SDK against a live tiny Llama, unchanged:
`files.create` -> `fine_tuning.jobs.create` -> poll to `succeeded` -> events, checkpoints ->
chat with the fine-tuned model; plus cancel, pagination and the typed errors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, cast

import httpx
import openai
import pytest
import torch
from openai.types.fine_tuning import FineTuningJob
from openai.types.fine_tuning.job_create_params import Hyperparameters
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from tests.unit.api.openai_live import decoder_service, decoder_settings, sdk, sdk_extra
from tests.unit.tiny_decoder import tiny_llama, tiny_tokenizer

WORDS = [
    "apple",
    "banana",
    "cherry",
    "dog",
    "fox",
    "quick",
    "brown",
    "lazy",
    "hello",
    "world",
    "paris",
    "alice",
    "bob",
    "today",
    "fine",
    "code",
]
# Evaluate every other step, log every step: a 6-step job gives 3 checkpoints in a second or two.
EXTRA = {
    "switchyard": {
        "hyperparameters": {
            "eval_every_steps": 2,
            "log_every_steps": 1,
            "early_stopping_patience": None,
            "seed": 0,
        }
    }
}


def chat_rows(words: list[str]) -> bytes:
    """OpenAI's chat fine-tuning format, one JSON object a line."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"word: {w}"},
                {"role": "assistant", "content": "fine"},
            ]
        }
        for w in words
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tok: PreTrainedTokenizerFast = tiny_tokenizer()
    model: LlamaForCausalLM = tiny_llama(tok)
    with decoder_service(model, tok, decoder_settings(tmp_path_factory.mktemp("ft"))) as url:
        yield url


def wait_terminal(client: openai.OpenAI, job_id: str, timeout: float = 60) -> FineTuningJob:
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(0.1)


def start(
    client: openai.OpenAI,
    suffix: str,
    hyperparameters: Hyperparameters | None = None,
    **extra: Any,
) -> FineTuningJob:
    train = client.files.create(file=("train.jsonl", chat_rows(WORDS[:12])), purpose="fine-tune")
    valid = client.files.create(file=("valid.jsonl", chat_rows(WORDS[12:])), purpose="fine-tune")
    assert train.object == "file" and train.purpose == "fine-tune" and train.bytes > 0
    assert client.files.retrieve(train.id).filename == "train.jsonl"
    return client.fine_tuning.jobs.create(
        model="_base",
        training_file=train.id,
        validation_file=valid.id,
        suffix=suffix,
        hyperparameters=hyperparameters or {"n_epochs": 2, "batch_size": 4},
        extra_body={**EXTRA, **extra},
    )


def test_a_job_from_files_to_a_served_fine_tuned_model(decoder: str) -> None:
    client = sdk(decoder)
    created = start(client, "ft-words")
    assert created.object == "fine_tuning.job" and created.model == "_base"
    assert created.status in ("queued", "validating_files", "running")
    job = wait_terminal(client, created.id)
    assert job.status == "succeeded", job.error
    assert job.finished_at is not None
    assert job.fine_tuned_model == "ft-words" and job.finished_at >= job.created_at
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
    assert created.id in [j.id for j in client.fine_tuning.jobs.list()]
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(created.id))
    assert [c.step_number for c in checkpoints] == [6, 4, 2]  # newest first
    best = [c for c in checkpoints if sdk_extra(c)["best"]]
    assert len(best) == 1 and best[0].fine_tuned_model_checkpoint == "ft-words"
    assert all("valid_loss" in c.metrics.model_dump() for c in checkpoints)
    lineage = sdk_extra(client.models.retrieve("ft-words"))["switchyard"]["versions"][0]
    assert lineage["lineage"]["job_id"] == created.id
    reply = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "user", "content": "word: dog"}],
        max_tokens=4,
    )
    assert reply.model == "ft-words" and reply.choices[0].message.content is not None


def test_events_page_newest_first_over_the_whole_log(decoder: str) -> None:
    client = sdk(decoder)
    job = wait_terminal(client, start(client, "ft-events").id)
    ours = httpx.get(f"{decoder}/v1/training-jobs/{job.id}/events").json()["data"]
    first = client.fine_tuning.jobs.list_events(job.id, limit=3)
    assert len(first.data) == 3 and first.has_more
    every = list(client.fine_tuning.jobs.list_events(job.id, limit=3))  # the SDK pages on
    assert [int(e.id) for e in every] == [e["id"] for e in reversed(ours)]
    assert every[0].message == "Job succeeded" and every[0].type == "message"
    losses = [e for e in every if e.data and cast(dict[str, Any], e.data)["kind"] == "loss"]
    assert losses and all(e.type == "metrics" and "training loss=" in e.message for e in losses)


def test_cancel_and_the_typed_errors(decoder: str) -> None:
    client = sdk(decoder)
    # "auto" passes (regression: the bounds of n_epochs once applied to "auto" itself, a 500).
    auto: Hyperparameters = {
        "n_epochs": "auto",
        "batch_size": "auto",
        "learning_rate_multiplier": 2.0,
    }
    job = start(client, "ft-cancel", auto, switchyard={"hyperparameters": {"max_steps": 500}})
    assert job.hyperparameters.n_epochs == "auto"
    assert job.hyperparameters.learning_rate_multiplier == 2.0  # twice LoRA's 1e-3
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert wait_terminal(client, job.id).status == "cancelled"
    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.jobs.retrieve("job_missing")
    assert missing.value.code == "job_not_found"
    with pytest.raises(openai.BadRequestError) as bad_model:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=job.training_file or "")
    assert bad_model.value.code == "invalid_model" and bad_model.value.param == "model"
    with pytest.raises(openai.BadRequestError) as bad_method:
        client.fine_tuning.jobs.create(
            model="_base", training_file=job.training_file or "", method={"type": "dpo"}
        )
    assert bad_method.value.code == "unsupported_method"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model="_base", training_file="ds_missing")
    with pytest.raises(openai.UnprocessableEntityError) as bad_epochs:
        client.fine_tuning.jobs.create(
            model="_base", training_file=job.training_file or "", hyperparameters={"n_epochs": 0}
        )
    assert bad_epochs.value.code == "invalid_request"
    with pytest.raises(openai.BadRequestError) as bad_purpose:
        client.files.create(file=("x.jsonl", b'{"text": "a"}\n'), purpose="batch")
    assert bad_purpose.value.code == "unsupported_purpose"
