"""Issue 17, stacking: a task LoRA trained on a stored (domain) LoRA, stored as one LoRA of
rank r1 + r2, served like any adapter; lineage, delete protection and domain_effect."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from app.base import FrozenBase
from app.errors import SwitchyardError
from app.registry.records import AdapterRef
from app.registry.store import CONFIG_FILE, WEIGHTS_FILE
from app.training.planning import JobRequest
from app.training.stacking import PARENT, check_parent, load_parent, stack_files
from tests.conftest import upload
from tests.unit.peft_reference import as_vector, peft_logits

LABELS = ["neg", "pos"]
TEXTS = ["good film", "an awful day at the sea", "fine", "sad and poor"]
RAW = {"top_k": None, "function_to_apply": "none"}
GOOD, BAD = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "sad"]


def make_lora(
    base_dir: Path, out: Path, *, r: int, targets: list[str], seed: int, rslora: bool = False
) -> dict[str, bytes]:
    """A LoRA made with plain PEFT (random non-zero B), its files."""
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=r,
        lora_alpha=3 * r,
        target_modules=targets,
        use_rslora=rslora,
    )
    peft = get_peft_model(model, config)
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.1)
    peft.save_pretrained(str(out))
    return {p.name: p.read_bytes() for p in out.iterdir() if p.name in (CONFIG_FILE, WEIGHTS_FILE)}


def both_active(base_dir: Path, task_dir: Path, parent_dir: Path) -> PeftModel:
    """PEFT's model with the task adapter and the parent both active (the task's head)."""
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2)
    peft = PeftModel.from_pretrained(model, task_dir)
    peft.load_adapter(str(parent_dir), adapter_name=PARENT)
    for module in peft.modules():
        if isinstance(module, LoraLayer):
            module.set_adapter(["default", PARENT])
    return peft.eval()


def served(client: TestClient, name: str) -> torch.Tensor:
    answer = client.post(f"/v1/adapters/{name}/predict", json={"inputs": TEXTS, "parameters": RAW})
    assert answer.status_code == 200, answer.text
    return torch.stack([as_vector(o, LABELS) for o in answer.json()["outputs"]])


def test_stack_serves_what_peft_computes_with_both_adapters(
    client: TestClient,
    tiny_base: FrozenBase,
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path: Path,
) -> None:
    # Different ranks, scales (rsLoRA on one) and targets: union with zero blocks.
    parent_files = make_lora(
        tiny_bert_dir, tmp_path / "p", r=4, targets=["query", "value"], seed=0, rslora=True
    )
    task_files = make_lora(tiny_bert_dir, tmp_path / "t", r=2, targets=["key", "value"], seed=1)
    assert upload(client, "domain", parent_files, labels=LABELS).status_code == 201
    parent = load_parent(client.app.state.registry, AdapterRef("domain", 1))  # type: ignore[attr-defined]
    stack = stack_files(task_files, parent, tiny_base)
    assert json.loads(stack[CONFIG_FILE])["r"] == 6
    assert upload(client, "stack", stack, labels=LABELS).status_code == 201
    reference = peft_logits(
        both_active(tiny_bert_dir, tmp_path / "t", tmp_path / "p"), tokenizer, TEXTS
    )
    alone = peft_logits(
        PeftModel.from_pretrained(
            AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2),
            tmp_path / "t",
        ).eval(),
        tokenizer,
        TEXTS,
    )
    got = served(client, "stack")
    assert (got - reference).abs().max() < 1e-4
    assert (alone - reference).abs().max() > 1e-3  # the parent does change the output


# ---------------------------------------------------------------- jobs over HTTP
def rows(count: int) -> list[dict[str, Any]]:
    out = []
    for n in range(count):
        pool, label = (GOOD, "pos") if n % 2 else (BAD, "neg")
        out.append({"text": f"{pool[n % 4]} {pool[(n + 1) % 4]} we saw it", "label": label})
    return out


def wait(client: TestClient, job: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = client.get(f"/v1/training-jobs/{job['id']}").json()
    return job


def submit(client: TestClient, **body: Any) -> Any:
    hp = {"epochs": 2, "batch_size": 8, "seed": 0, "head_init": "random", "rank": 2}
    full = {
        "adapter": "tickets",
        "method": "lora",
        "examples": rows(24),
        "hyperparameters": hp,
        **body,
    }
    return client.post("/v1/training-jobs", json=full)


@pytest.fixture
def domain(client: TestClient, tiny_bert_dir: Path, tmp_path: Path) -> dict[str, bytes]:
    files = make_lora(tiny_bert_dir, tmp_path / "d", r=4, targets=["query", "value"], seed=3)
    assert upload(client, "domain", files, labels=LABELS).status_code == 201
    return files


def test_training_on_top_keeps_the_parent_and_stores_rank_r1_plus_r2(
    client: TestClient, domain: dict[str, bytes]
) -> None:
    registry = client.app.state.registry  # type: ignore[attr-defined]
    before = load(registry.store.read_file("domain", 1, WEIGHTS_FILE))
    answer = submit(client, base_adapter="domain")
    assert answer.status_code == 202, answer.text
    assert answer.json()["base_adapter"] == {"adapter": "domain", "version": 1}
    job = wait(client, answer.json())
    assert job["status"] == "succeeded", job["error"]
    effect = job["domain_effect"]
    assert effect["metric"] == "accuracy"
    assert {"with", "without"} <= set(effect) and effect["with"] is not None
    assert effect["without"] is not None
    after = load(registry.store.read_file("domain", 1, WEIGHTS_FILE))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the parent is untouched
    config = json.loads(registry.store.read_file("tickets", 1, CONFIG_FILE))
    assert config["r"] == 4 + 2
    details = client.get("/v1/adapters/tickets").json()
    version = details["versions"][0]
    assert version["rank"] == 6
    assert version["lineage"]["parent"] == {"adapter": "domain", "version": 1}
    assert version["domain_effect"]["metric"] == "accuracy"
    assert served(client, "tickets").shape == (len(TEXTS), 2)


def test_auto_lists_the_stack_as_a_candidate(client: TestClient, domain: dict[str, bytes]) -> None:
    answer = submit(client, method="auto", base_adapter="domain", examples=rows(16))
    assert answer.status_code == 202, answer.text
    job = wait(client, answer.json())
    assert job["status"] == "succeeded", job["error"]
    stacked = [c for c in job["candidates"] if c["method"] == "lora+base_adapter"]
    assert len(stacked) == 1, job["candidates"]
    assert stacked[0]["base_adapter"] == {"adapter": "domain", "version": 1}
    assert job["domain_effect"]["metric"] == "accuracy"
    lineage = client.get("/v1/adapters/tickets").json()["versions"][0]["lineage"]
    assert ("parent" in lineage) == bool(stacked[0]["chosen"])


# ---------------------------------------------------------------- submit-time checks
@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({"base_adapter": "nope"}, 404, "base_adapter", "nope"),
        ({"base_adapter": "domain", "base_adapter_version": 7}, 404, "base_adapter_version", "7"),
        ({"base_adapter": "Bad Name"}, 400, "base_adapter", "Bad Name"),
        ({"base_adapter": "domain", "base_adapter_version": 0}, 400, "base_adapter_version", "0"),
        ({"base_adapter": "domain", "method": "ia3"}, 400, "method", "'ia3'"),
        (
            {"base_adapter": "domain", "hyperparameters": {"rank": 62}},
            400,
            "hyperparameters.rank",
            "4 (base_adapter 'domain' v1) + 62 (hyperparameters.rank) = 66 > max_rank 64",
        ),
    ],
)
def test_submit_refuses_a_bad_base_adapter(
    client: TestClient,
    domain: dict[str, bytes],
    body: dict[str, Any],
    status: int,
    param: str,
    words: str,
) -> None:
    jobs_before = len(client.get("/v1/training-jobs").json()["data"])
    answer = submit(client, **body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["param"] == param, error
    assert words in error["message"], error
    assert len(client.get("/v1/training-jobs").json()["data"]) == jobs_before  # nothing queued


def test_a_parent_that_is_not_a_lora_is_refused(client: TestClient) -> None:
    probe = {"adapter": "probe", "method": "linear_probe", "examples": rows(24)}
    assert wait(client, client.post("/v1/training-jobs", json=probe).json())["status"] == (
        "succeeded"
    )
    answer = submit(client, base_adapter="probe")
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "base_adapter"
    assert "'probe' v1 is a linear_probe adapter" in error["message"]


class Source:
    """A registry's answer about one stored version (what check_parent reads)."""

    def __init__(self, **meta: Any) -> None:
        self.found = SimpleNamespace(version=1, method="lora", rank=4, **meta)

    def meta(self, name: str, version: int | None = None) -> Any:
        return self.found

    def load_weights(self, name: str, version: int) -> Any:
        raise AssertionError("not read at submission")


@pytest.mark.parametrize(
    ("meta", "words"),
    [
        ({"task": "classification", "base_fingerprint": "sha256:other"}, "made for base"),
        ({"task": "generation"}, "task 'generation', which runs on a decoder base"),
    ],
)
def test_check_parent_refuses_another_base_or_kind(
    tiny_base: FrozenBase, meta: dict[str, Any], words: str
) -> None:
    with pytest.raises(SwitchyardError) as caught:
        check_parent(
            Source(**meta),
            name="domain",
            version=None,
            task="classification",
            method="lora",
            rank=2,
            base=tiny_base,
            max_rank=64,
        )
    assert caught.value.status == 400 and caught.value.param == "base_adapter"
    assert words in caught.value.message and "'domain' v1" in caught.value.message


# ---------------------------------------------------------------- delete protection
def child_of(
    client: TestClient, parent: str, version: int, name: str, files: dict[str, bytes]
) -> None:
    """Upload `files` as a version of `name` whose lineage names `parent` v`version`."""
    meta = {"lineage": {"parent": {"adapter": parent, "version": version}}}
    answer = client.post(
        "/v1/adapters",
        data={"name": name, "task": "classification", "labels": json.dumps(LABELS)},
        files={
            **{k: (k, v) for k, v in files.items()},
            "switchyard.json": ("switchyard.json", json.dumps(meta).encode()),
        },
    )
    assert answer.status_code == 201, answer.text


def test_deleting_a_parent_with_children_is_a_409_unless_cascade(
    client: TestClient, domain: dict[str, bytes]
) -> None:
    assert upload(client, "domain", domain, labels=LABELS).status_code == 201  # v2
    child_of(client, "domain", 1, "kid", domain)
    child_of(client, "domain", 1, "kid", domain)  # kid v2
    child_of(client, "kid", 2, "grandkid", domain)
    names = lambda: sorted(a["name"] for a in client.get("/v1/adapters").json()["data"])  # noqa: E731
    before = names()
    refused = client.delete("/v1/adapters/domain")
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "adapter_has_children"
    assert "'kid' v1, v2" in error["message"] and "cascade=true" in error["message"]
    assert client.delete("/v1/adapters/domain?version=1").status_code == 409
    assert names() == before  # nothing changed on the 409
    assert len(client.get("/v1/adapters/domain").json()["versions"]) == 2
    # v2 has no children: it goes alone.
    assert client.delete("/v1/adapters/domain?version=2").json()["deleted_versions"] == [2]
    done = client.delete("/v1/adapters/domain?cascade=true")
    assert done.status_code == 200, done.text
    assert done.json()["deleted_children"] == [
        {"name": "grandkid", "deleted_versions": [1]},
        {"name": "kid", "deleted_versions": [1, 2]},
    ]
    assert names() == sorted(set(before) - {"domain", "kid", "grandkid"})


# ---------------------------------------------------------------- parsing
@given(value=st.one_of(st.none(), st.integers(), st.text(max_size=5), st.booleans(), st.floats()))
def test_base_adapter_version_is_a_positive_integer_or_a_400(value: Any) -> None:
    body = {"adapter": "a", "examples": rows(4), "base_adapter": "domain"}
    ok = value is None or (type(value) is int and value >= 1)
    try:
        request = JobRequest.parse({**body, "base_adapter_version": value})
    except SwitchyardError as exc:
        assert not ok and exc.status == 400 and exc.param == "base_adapter_version"
        assert repr(value) in exc.message
    else:
        assert ok and request.base_adapter_version == value
        stored = JobRequest.from_record(request.to_record(task="classification"))
        assert stored.base_adapter_version == value and stored.base_adapter == "domain"


@given(value=st.one_of(st.text(max_size=70), st.integers(), st.lists(st.integers(), max_size=2)))
def test_base_adapter_is_an_adapter_name_or_a_400(value: Any) -> None:
    body = {"adapter": "a", "examples": rows(4), "base_adapter": value}
    try:
        request = JobRequest.parse(body)
    except SwitchyardError as exc:
        assert exc.status == 400 and exc.param == "base_adapter"
    else:
        assert isinstance(value, str) and request.base_adapter == value
