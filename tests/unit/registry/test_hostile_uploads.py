"""Hostile uploads over HTTP: every case is refused with a 4xx in API.md's error shape, and the
store is byte-for-byte what it was before the request.

Safetensors bytes for header tricks are made by hand (struct + json); nothing here unpickles.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load as load_st
from safetensors.torch import save as save_st
from transformers import BertModel, PreTrainedTokenizerBase

from app.base import FrozenBase
from app.config import Settings
from app.main import create_app
from app.registry.catalog import Registry
from tests.conftest import peft_adapter, tiny_bert_config

CONFIG, WEIGHTS, META = "adapter_config.json", "adapter_model.safetensors", "switchyard.json"
LABELS = ["neg", "pos"]
A_KEY = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"
B_KEY = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight"


@dataclass
class Good:
    """The ingredients hostile cases are made from."""

    config: bytes
    weights: bytes
    rank8: dict[str, bytes]
    other_base: dict[str, bytes]

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(load_st(self.weights))

    def config_json(self) -> dict[str, Any]:
        return json.loads(self.config)


@dataclass
class Upload:
    """One multipart request: form fields and file parts (field -> (filename, bytes))."""

    data: dict[str, str]
    files: list[tuple[str, tuple[str, bytes]]]


@dataclass
class Case:
    build: Callable[[Good], Upload]
    status: int
    code: str
    settings: dict[str, Any] = field(default_factory=dict)
    # what an attacker with a foothold left in the store: prepare(store, outside folder)
    prepare: Callable[[Path, Path], None] | None = None


# ---------------------------------------------------------------- builders
def st_bytes(
    header: dict[str, Any] | str, data: bytes = b"", *, length: int | None = None
) -> bytes:
    """A safetensors blob by hand: u64 little-endian header length, JSON header, raw data."""
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def with_tensors(good: Good, change: Callable[[dict[str, torch.Tensor]], object]) -> bytes:
    tensors = good.tensors
    change(tensors)
    return save_st(tensors)


def form(
    good: Good,
    *,
    name: str = "fresh",
    config: bytes | None = None,
    weights: bytes | None = None,
    labels: list[str] | str | None = LABELS,
    extra: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
    fields: dict[str, str] | None = None,
) -> Upload:
    data = {"name": name, "task": "classification", **(fields or {})}
    if labels is not None:
        data["labels"] = labels if isinstance(labels, str) else json.dumps(labels)
    parts = {
        CONFIG: config if config is not None else good.config,
        WEIGHTS: weights if weights is not None else good.weights,
        **(extra or {}),
    }
    files = [(k, (k, v)) for k, v in parts.items() if k not in drop]
    return Upload(data, files)


def set_value(key: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[3] = value

    return change


Change = Callable[[dict[str, torch.Tensor]], None]


def as_dtype(key: str, dtype: torch.dtype, value: float) -> Change:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors[key] = tensors[key].to(dtype)
        tensors[key].view(-1)[0] = value

    return change


def all_bf16(key: str, value: float) -> Change:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        for name in tensors:
            tensors[name] = tensors[name].to(torch.bfloat16)
        tensors[key].view(-1)[0] = value

    return change


def rename(old: str, new: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors[new] = tensors.pop(old)

    return change


def move_pair(old: str, new: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        for key in (A_KEY, B_KEY):
            tensors[key.replace(old, new)] = tensors.pop(key)

    return change


def torch_zip() -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2, 2)}, buffer)
    return buffer.getvalue()


def zip_slip() -> bytes:
    """A zip whose entry climbs out of any folder it is extracted into."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../adapter_model.safetensors", b"\x00" * 64)
    return buffer.getvalue()


def link_adapter_folder(store: Path, outside: Path) -> None:
    (outside / "1").mkdir()
    (outside / "1" / META).write_text('{"task": "classification"}')
    (store / "fresh").symlink_to(outside, target_is_directory=True)


def file_as_adapter_folder(store: Path, _outside: Path) -> None:
    (store / "fresh").write_bytes(b"not a folder")


def with_config(**changes: Any) -> Callable[[Good], Upload]:
    return lambda g: form(g, config=json.dumps({**g.config_json(), **changes}).encode())


def dup_config(good: Good) -> bytes:
    text = good.config.decode()
    return ('{"r": 64, ' + text.lstrip()[1:]).encode()


TWO_F32 = b"\x00" * 8
CASES = {
    # ---- not safetensors at all
    "pickle-named-safetensors": Case(
        lambda g: form(g, weights=pickle.dumps({"weight": [1.0, 2.0], "note": "harmless"})),
        400,
        "invalid_safetensors",
    ),
    "torch-save-zip": Case(lambda g: form(g, weights=torch_zip()), 400, "invalid_safetensors"),
    "empty-weights": Case(lambda g: form(g, weights=b""), 400, "invalid_safetensors"),
    "zip-slip-archive": Case(lambda g: form(g, weights=zip_slip()), 400, "invalid_safetensors"),
    # ---- names and file names
    "name-dotdot-slash": Case(lambda g: form(g, name="../evil"), 400, "invalid_name"),
    "name-nested-traversal": Case(lambda g: form(g, name="a/../../b"), 400, "invalid_name"),
    "name-dotdot": Case(lambda g: form(g, name=".."), 400, "invalid_name"),
    "name-cyrillic-a": Case(lambda g: form(g, name="fresh\u0430"), 400, "invalid_name"),
    "name-fullwidth": Case(lambda g: form(g, name="\uff46resh"), 400, "invalid_name"),
    "name-trailing-newline": Case(lambda g: form(g, name="fresh\n"), 400, "invalid_name"),
    "name-nul-byte": Case(lambda g: form(g, name="fresh\x00"), 400, "invalid_name"),
    # ---- symlinks and strays in the store
    "store-symlinked-adapter-folder": Case(
        lambda g: form(g), 409, "store_corrupted", prepare=link_adapter_folder
    ),
    "store-file-as-adapter-folder": Case(
        lambda g: form(g), 409, "store_corrupted", prepare=file_as_adapter_folder
    ),
    "filename-traversal": Case(
        lambda g: Upload(
            {"name": "fresh", "labels": json.dumps(LABELS)},
            [(CONFIG, (CONFIG, g.config)), ("x", ("../../adapter_model.safetensors", g.weights))],
        ),
        400,
        "unexpected_file",
    ),
    # ---- the safetensors header
    "header-size-bomb": Case(
        lambda g: form(g, weights=st_bytes("{}", length=10**12)), 400, "invalid_safetensors"
    ),
    "header-beyond-file": Case(
        lambda g: form(g, weights=st_bytes({"a": entry("F32", [2], 0, 8)}, TWO_F32, length=4096)),
        400,
        "invalid_safetensors",
    ),
    "header-not-object": Case(
        lambda g: form(g, weights=st_bytes("[1, 2]")), 400, "invalid_safetensors"
    ),
    "overlapping-offsets": Case(
        lambda g: form(
            g,
            weights=st_bytes(
                {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, b"\x00" * 12
            ),
        ),
        400,
        "invalid_safetensors",
    ),
    "gapped-offsets": Case(
        lambda g: form(
            g,
            weights=st_bytes(
                {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 12, 20)}, b"\x00" * 20
            ),
        ),
        400,
        "invalid_safetensors",
    ),
    "out-of-range-offsets": Case(
        lambda g: form(g, weights=st_bytes({"a": entry("F32", [2], 0, 8)}, b"\x00" * 4)),
        400,
        "invalid_safetensors",
    ),
    "trailing-bytes": Case(
        lambda g: form(g, weights=st_bytes({"a": entry("F32", [2], 0, 8)}, b"\x00" * 64)),
        400,
        "invalid_safetensors",
    ),
    "dtype-i64": Case(
        lambda g: form(g, weights=st_bytes({"a": entry("I64", [1], 0, 8)}, TWO_F32)),
        400,
        "invalid_dtype",
    ),
    "dtype-u8": Case(
        lambda g: form(g, weights=st_bytes({"a": entry("U8", [8], 0, 8)}, TWO_F32)),
        400,
        "invalid_dtype",
    ),
    "dtype-bool": Case(
        lambda g: form(g, weights=st_bytes({"a": entry("BOOL", [8], 0, 8)}, TWO_F32)),
        400,
        "invalid_dtype",
    ),
    "dtype-size-mismatch": Case(
        lambda g: form(g, weights=st_bytes({"a": entry("F16", [4], 0, 16)}, b"\x00" * 16)),
        400,
        "invalid_safetensors",
    ),
    "duplicate-header-keys": Case(
        lambda g: form(
            g,
            weights=st_bytes(
                '{"a": '
                + json.dumps(entry("F32", [2], 0, 8))
                + ', "a": '
                + json.dumps(entry("F32", [2], 0, 8))
                + "}",
                TWO_F32,
            ),
        ),
        400,
        "invalid_json",
    ),
    # ---- weights that parse but are wrong
    "nan-weights": Case(
        lambda g: form(g, weights=with_tensors(g, set_value(A_KEY, float("nan")))),
        400,
        "non_finite_weights",
    ),
    "inf-weights": Case(
        lambda g: form(g, weights=with_tensors(g, set_value(B_KEY, float("inf")))),
        400,
        "non_finite_weights",
    ),
    "nan-in-f16-beside-f32": Case(
        lambda g: form(g, weights=with_tensors(g, as_dtype(B_KEY, torch.float16, float("nan")))),
        400,
        "non_finite_weights",
    ),
    "inf-in-bf16-tensors": Case(
        lambda g: form(g, weights=with_tensors(g, all_bf16(A_KEY, float("-inf")))),
        400,
        "non_finite_weights",
    ),
    "config-huge-rank": Case(with_config(r=2**31), 400, "rank_too_large"),
    "config-huge-rank-pattern": Case(
        with_config(rank_pattern={"query": 10**9}), 400, "rank_too_large"
    ),
    "rank-over-max": Case(
        lambda g: form(g, config=g.rank8[CONFIG], weights=g.rank8[WEIGHTS]),
        400,
        "rank_too_large",
        {"max_rank": 4},
    ),
    "wrong-shape": Case(
        lambda g: form(
            g,
            weights=with_tensors(g, lambda t: t.__setitem__(A_KEY, t[A_KEY][:, :16].contiguous())),
        ),
        400,
        "shape_mismatch",
    ),
    "unknown-module": Case(
        lambda g: form(g, weights=with_tensors(g, move_pair("layer.0.", "layer.7."))),
        400,
        "unknown_module",
    ),
    "unknown-tensor": Case(
        lambda g: form(g, weights=with_tensors(g, rename(A_KEY, "base_model.model.bert.evil"))),
        400,
        "unknown_tensor",
    ),
    "missing-head": Case(
        lambda g: form(
            g, weights=with_tensors(g, lambda t: [t.pop(k) for k in list(t) if "classifier" in k])
        ),
        400,
        "invalid_head",
    ),
    "wrong-base-hidden-size": Case(
        lambda g: form(g, config=g.other_base[CONFIG], weights=g.other_base[WEIGHTS]),
        400,
        "shape_mismatch",
    ),
    "wrong-base-fingerprint": Case(
        lambda g: form(
            g,
            extra={
                META: json.dumps(
                    {
                        "task": "classification",
                        "labels": LABELS,
                        "base_fingerprint": "sha256:" + "0" * 64,
                    }
                ).encode()
            },
        ),
        409,
        "base_mismatch",
    ),
    "wrong-base-fingerprint-field": Case(
        lambda g: form(g, fields={"base_fingerprint": "sha256:" + "1" * 64}), 409, "base_mismatch"
    ),
    "labels-count-mismatch": Case(lambda g: form(g, labels=["a", "b", "c"]), 400, "shape_mismatch"),
    "labels-not-json": Case(lambda g: form(g, labels="neg,pos"), 400, "invalid_labels"),
    # ---- configs
    "config-not-json": Case(lambda g: form(g, config=b"peft_type: LORA\n"), 400, "invalid_json"),
    "config-not-object": Case(lambda g: form(g, config=b"[1, 2]"), 400, "invalid_json"),
    "config-nan-literal": Case(
        lambda g: form(g, config=b'{"peft_type": "LORA", "r": NaN}'), 400, "invalid_json"
    ),
    "config-duplicate-keys": Case(lambda g: form(g, config=dup_config(g)), 400, "invalid_json"),
    "config-unknown-method": Case(
        lambda g: form(g, config=json.dumps({**g.config_json(), "peft_type": "ADALORA"}).encode()),
        400,
        "unsupported_method",
    ),
    "config-dora": Case(
        lambda g: form(g, config=json.dumps({**g.config_json(), "use_dora": True}).encode()),
        400,
        "invalid_adapter_config",
    ),
    "meta-duplicate-keys": Case(
        lambda g: form(g, extra={META: b'{"task": "classification", "task": "regression"}'}),
        400,
        "invalid_json",
    ),
    "meta-lineage-not-object": Case(
        lambda g: form(g, extra={META: b'{"task": "classification", "lineage": ["x"]}'}),
        400,
        "invalid_metadata",
    ),
    "meta-not-object": Case(
        lambda g: form(g, extra={META: b'["classification"]'}), 400, "invalid_json"
    ),
    "meta-duplicate-labels": Case(
        lambda g: form(
            g, labels=None, extra={META: b'{"task": "classification", "labels": ["same", "same"]}'}
        ),
        400,
        "invalid_labels",
    ),
    # ---- issue 13: user regexes, derived overflow, nesting, text, ambiguous heads
    "config-invalid-regex": Case(with_config(rank_pattern={"(": 8}), 400, "invalid_config"),
    "config-backreference-regex": Case(
        with_config(alpha_pattern={r"(q)\1": 1}), 400, "invalid_config"
    ),
    "config-alpha-1e308": Case(with_config(lora_alpha=1e308), 400, "invalid_adapter_config"),
    "config-deep-nesting": Case(
        lambda g: form(g, config=b'{"a": ' * 100 + b"1" + b"}" * 100), 400, "invalid_json"
    ),
    "config-lone-surrogate": Case(with_config(note="\ud800"), 400, "invalid_text"),
    # ---- a pooled head (`layers`/`pooling`, app/registry/pooled_head.py): as a probe's keys
    "config-pooling-unknown": Case(with_config(pooling="median"), 400, "invalid_adapter_config"),
    "config-layers-not-a-list": Case(with_config(layers="-1"), 400, "invalid_adapter_config"),
    "config-layers-of-bools": Case(with_config(layers=[True]), 400, "invalid_adapter_config"),
    "config-layers-past-the-end": Case(with_config(layers=[10**18]), 400, "invalid_layer"),
    "config-layers-wider-than-head": Case(with_config(layers=[-1, -2]), 400, "shape_mismatch"),
    "config-pooled-token-head": Case(
        lambda g: form(
            g,
            config=json.dumps({**g.config_json(), "pooling": "mean"}).encode(),
            fields={"task": "token_classification"},
        ),
        400,
        "unsupported_task",
    ),
    "two-heads": Case(
        lambda g: form(
            g,
            weights=with_tensors(
                g, lambda t: t.__setitem__("base_model.model.score.weight", torch.zeros(2, 32))
            ),
        ),
        400,
        "invalid_head",
    ),
    "f64-beyond-float32": Case(
        lambda g: form(g, weights=with_tensors(g, as_dtype(B_KEY, torch.float64, 1e300))),
        400,
        "non_finite_weights",
    ),
    # ---- sizes and missing parts
    "over-upload-limit": Case(
        lambda g: form(g), 413, "payload_too_large", {"max_upload_bytes": 4096}
    ),
    "missing-weights": Case(lambda g: form(g, drop=(WEIGHTS,)), 400, "missing_file"),
    "missing-config": Case(lambda g: form(g, drop=(CONFIG,)), 400, "missing_file"),
    "duplicate-file": Case(
        lambda g: Upload(
            {"name": "fresh", "labels": json.dumps(LABELS)},
            [
                (CONFIG, (CONFIG, g.config)),
                (WEIGHTS, (WEIGHTS, g.weights)),
                (WEIGHTS, (WEIGHTS, g.weights)),
            ],
        ),
        400,
        "duplicate_field",
    ),
}


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def good(
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path_factory: pytest.TempPathFactory,
) -> Good:
    work = tmp_path_factory.mktemp("hostile")
    files = peft_adapter(tiny_bert_dir, r=4, out=work / "good")
    rank8 = peft_adapter(tiny_bert_dir, r=8, out=work / "rank8")
    torch.manual_seed(1)
    other_dir = work / "other-base"
    BertModel(tiny_bert_config(hidden_size=48, intermediate_size=96)).save_pretrained(other_dir)
    tokenizer.save_pretrained(other_dir)
    other = peft_adapter(other_dir, r=4, out=work / "other")
    return Good(files[CONFIG], files[WEIGHTS], rank8, other)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under the store (links not followed) with the bytes of each file."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            is_file = path.is_file() and not path.is_symlink()
            out[str(path.relative_to(root))] = path.read_bytes() if is_file else None
    return out


@pytest.fixture
def make_client(tmp_path: Path, tiny_base: FrozenBase) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        settings = Settings(
            store=tmp_path / "store",
            database_url=f"sqlite:///{tmp_path}/db.sqlite",
            max_wait_ms=1.0,
            _env_file=None,
            **overrides,
        )
        client = TestClient(create_app(settings, base=tiny_base))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


# ---------------------------------------------------------------- the table
def test_good_upload_is_accepted(make_client: Callable[..., TestClient], good: Good) -> None:
    """The control: the unmodified ingredients upload fine, so each case fails for its trick."""
    client = make_client(max_rank=8)
    upload = form(good)
    response = client.post("/v1/adapters", data=upload.data, files=upload.files)
    assert response.status_code == 201, response.text
    upload = form(good, config=good.rank8[CONFIG], weights=good.rank8[WEIGHTS])
    assert client.post("/v1/adapters", data=upload.data, files=upload.files).status_code == 201


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_hostile_upload_is_refused(
    make_client: Callable[..., TestClient], good: Good, tmp_path: Path, case: Case
) -> None:
    client = make_client(**case.settings)
    # the adapter already there, stored under default limits (some cases shrink them)
    state = client.app.state  # type: ignore[attr-defined]
    seed = Registry(state.registry.store, state.base, Settings(_env_file=None))
    seed.register(
        "victim",
        config_bytes=good.config,
        weights_bytes=good.weights,
        task="classification",
        labels=LABELS,
    )
    store = tmp_path / "store"
    outside = tmp_path / "outside"
    outside.mkdir()
    if case.prepare is not None:
        case.prepare(store, outside)
    before = snapshot(store)
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    beyond_before = snapshot(outside)

    upload = case.build(good)
    response = client.post("/v1/adapters", data=upload.data, files=upload.files)

    assert response.status_code == case.status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "param"}
    assert error["code"] == case.code, error
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    assert snapshot(store) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == outside_before
    assert snapshot(outside) == beyond_before
    assert client.get("/v1/adapters").json()["data"][0]["latest_version"] == 1
    # the service still answers with the adapter that was there
    assert client.post("/v1/adapters/victim/predict", json={"inputs": ["ok"]}).status_code == 200
