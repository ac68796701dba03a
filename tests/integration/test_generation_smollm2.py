"""Generation on the real SmolLM2-135M-Instruct base, over HTTP against `switchyard serve`.

A LoRA adapter trained through the job API on a small synthetic task (answer with a fixed
JSON shape, mapping a product word to its code) gets held-out prompts right where the bare
base does not; served greedy output equals plain PEFT's token for token; and a batch that
mixes LoRA, prefix and bare rows gives each row what it gets alone. Bounded to a few minutes
on 2 CPU cores: short rows, few steps.
"""

from __future__ import annotations

import copy
import io
import random
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from tests.integration.conftest import LiveServer, run_job, start_server, stop_server

pytestmark = pytest.mark.slow

CODES = {
    "apple": "APL",
    "banana": "BAN",
    "cherry": "CHR",
    "grape": "GRP",
    "lemon": "LMN",
    "mango": "MNG",
    "peach": "PCH",
    "plum": "PLM",
}


def task_rows(count: int, *, seed: int) -> list[dict[str, str]]:
    """`Order 4821: 3 x plum ->` answered by `{"order": 4821, "qty": 3, "sku": "PLM"}`: copy
    numbers into a fixed JSON shape and map each product word to its code."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        order, qty, product = (
            rng.randrange(1000, 10000),
            rng.randrange(1, 10),
            rng.choice(sorted(CODES)),
        )
        rows.append(
            {
                "prompt": f"Order {order}: {qty} x {product} ->",
                "completion": f' {{"order": {order}, "qty": {qty}, "sku": "{CODES[product]}"}}',
            }
        )
    return rows


TRAIN = task_rows(80, seed=1)
HELD_OUT = [row for row in task_rows(60, seed=2) if row not in TRAIN][:50]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {
        "SWITCHYARD_BASE_MODEL": "smollm2",
        "SWITCHYARD_MAX_WAIT_MS": "50",
        # One thread: on shared cores a second OpenMP thread slowed forwards ~10x here.
        "OMP_NUM_THREADS": "1",
    }
    server = start_server(tmp_path_factory.mktemp("gen-store"), env=env, timeout=600)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def trained(server: LiveServer) -> dict[str, Any]:
    """A LoRA and a (briefly trained) prefix adapter, both through POST /v1/training-jobs."""
    examples = TRAIN
    lora = run_job(
        server,
        {
            "adapter": "json-lora",
            "task": "generation",
            "method": "lora",
            "examples": examples,
            "hyperparameters": {
                "epochs": 3,
                "batch_size": 8,
                "learning_rate": 2e-3,
                "rank": 8,
                "seed": 0,
            },
        },
        timeout=900,
    )
    assert lora["status"] == "succeeded", lora
    prefix = run_job(
        server,
        {
            "adapter": "json-prefix",
            "task": "generation",
            "method": "prefix",
            "examples": examples[:16],
            "hyperparameters": {"epochs": 1, "batch_size": 8, "num_virtual_tokens": 8, "seed": 0},
        },
        timeout=600,
    )
    assert prefix["status"] == "succeeded", prefix
    return {"lora": lora, "prefix": prefix}


@pytest.fixture(scope="module")
def reference() -> tuple[Any, PreTrainedTokenizerBase]:
    """Plain transformers: the cached dequantized SmolLM2, loaded independently of the server."""
    from app.base import resolve_base_path
    from app.config import Settings

    torch.set_num_threads(1)
    path = resolve_base_path(Settings(base_model="smollm2", _env_file=None))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def predict(server: LiveServer, adapter: str, prompts: list[str], tokens: int = 24) -> list[str]:
    response = server.http.post(
        f"/v1/adapters/{adapter}/predict",
        json={"inputs": prompts, "parameters": {"max_new_tokens": tokens}},
    )
    assert response.status_code == 200, response.text
    return [out["generated_text"] for out in response.json()["outputs"]]


def exact(texts: list[str]) -> int:
    return sum(
        t.strip() == row["completion"].strip() for t, row in zip(texts, HELD_OUT, strict=True)
    )


def test_trained_lora_answers_held_out_prompts_the_base_does_not(
    server: LiveServer, trained: dict[str, Any]
) -> None:
    prompts = [row["prompt"] for row in HELD_OUT]
    lora, bare = (
        exact(predict(server, "json-lora", prompts)),
        exact(predict(server, "_base", prompts)),
    )
    print(f"held-out exact match: LoRA {lora}/50, bare base {bare}/50")
    assert lora >= 45 and bare <= 5


def download(server: LiveServer, name: str, folder: Path) -> Path:
    response = server.http.get(f"/v1/adapters/{name}/download")
    assert response.status_code == 200
    zipfile.ZipFile(io.BytesIO(response.content)).extractall(folder)
    return folder


def completion(server: LiveServer, model: str, prompt: str, tokens: int) -> tuple[str, int]:
    body = server.http.post(
        "/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": tokens}
    ).json()
    return body["choices"][0]["text"], body["usage"]["completion_tokens"]


def greedy(
    peft: Any, tok: PreTrainedTokenizerBase, prompt: str, tokens: int, *, prefix: bool
) -> list[int]:
    """PEFT's greedy generate; for prefix adapters a greedy loop over PEFT's forward (PEFT
    0.21's generate drops the prefix under transformers 5)."""
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        if not prefix:
            out = peft.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=tokens,
                do_sample=False,
            )[0, ids.shape[1] :].tolist()
        else:
            out = []
            for _ in range(tokens):
                nxt = int(peft(input_ids=ids).logits[0, -1].argmax())
                out.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    eos = peft.generation_config.eos_token_id
    stops = {eos} if isinstance(eos, int) else set(eos or [])
    return next((out[:i] for i, t in enumerate(out) if t in stops), out)


@pytest.mark.parametrize(("name", "prefix"), [("json-lora", False), ("json-prefix", True)])
def test_served_greedy_equals_plain_peft(
    server: LiveServer,
    trained: dict[str, Any],
    reference: tuple[Any, PreTrainedTokenizerBase],
    tmp_path: Path,
    name: str,
    prefix: bool,
) -> None:
    model, tok = reference
    peft = PeftModel.from_pretrained(copy.deepcopy(model), download(server, name, tmp_path))
    for row in HELD_OUT[:3]:
        expected = greedy(peft.eval(), tok, row["prompt"], 16, prefix=prefix)
        text, count = completion(server, name, row["prompt"], 16)
        # Same count and same decoded text: the same tokens (the API returns text, not ids).
        assert count == len(expected)
        assert text == tok.decode(expected, skip_special_tokens=True)


def test_mixed_batch_rows_equal_alone(server: LiveServer, trained: dict[str, Any]) -> None:
    """LoRA, prefix and bare rows sent at once share batches; each equals its lone answer."""
    requests = [
        (adapter, row["prompt"])
        for row in HELD_OUT[:4]
        for adapter in ("json-lora", "json-prefix", "_base")
    ]
    alone = [predict(server, adapter, [prompt], 16)[0] for adapter, prompt in requests]
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        together = list(pool.map(lambda r: predict(server, r[0], [r[1]], 16)[0], requests))
    assert together == alone
    mixed_request = predict(server, "json-lora", [r["prompt"] for r in HELD_OUT[:4]], 16)
    assert mixed_request == [alone[3 * i] for i in range(4)]
