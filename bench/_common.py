"""Shared set-up for benchmarks: the real packaged base, random PEFT LoRA adapters, timing."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification

from app.base import load_base, resolve_base_path
from app.config import Settings
from app.registry.catalog import Registry
from app.registry.store import AdapterStore
from app.runtime.metrics import Metrics
from app.runtime.runtime import Runtime


def make_runtime(
    store: Path, *, device: str | None = None, **overrides: Any
) -> tuple[Runtime, Registry, Settings]:
    """A runtime over the real MiniLM base with a fresh store (on `device` when given)."""
    if device is not None:
        overrides["device"] = device
    settings = Settings(store=store, _env_file=None, **overrides)
    base = load_base(settings)
    registry = Registry(AdapterStore(settings.store), base, settings)
    return Runtime(base, registry, settings, Metrics()), registry, settings


def make_lora_files(
    base_dir: Path, out: Path, *, seed: int, r: int = 8, num_labels: int = 2
) -> dict[str, bytes]:
    """A rank-r all-linear LoRA on MiniLM (about 1.4 MB at r=8) made with plain PEFT."""
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=num_labels)
    peft = get_peft_model(
        model,
        LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=2 * r, target_modules="all-linear"),
    )
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.02)
    peft.save_pretrained(str(out))
    return {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".json", ".safetensors")}


def base_dir() -> Path:
    return resolve_base_path(Settings(_env_file=None))


def tempdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="switchyard-bench-"))


def timeit(fn: Callable[[], object], *, repeat: int, warmup: int = 2) -> list[float]:
    """Wall times in seconds of `repeat` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def p50(values: list[float]) -> float:
    return statistics.median(values)


def write_section(readme: Path, begin: str, end: str, text: str) -> None:
    """Replace one benchmark's section of bench/README.md (between its markers), or append."""
    current = readme.read_text() if readme.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + block + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    readme.write_text(current)


def wait_for_job(http: httpx.Client, job_id: str, timeout: float) -> dict[str, Any]:
    """Poll a training job each second until it ends. Past `timeout` the job is cancelled and
    comes back as status `timed_out`, so a bench row says so instead of hanging."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/v1/training-jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(1)
    http.post(f"/v1/training-jobs/{job_id}/cancel")
    return {"id": job_id, "status": "timed_out", "error": {"message": f"over {timeout} s"}}


def upload_peft_folders(http: httpx.Client, root: Path, names: list[str]) -> None:
    """POST each PEFT folder `root/<name>` as adapter `name` (labels a, b)."""
    for name in names:
        files = {
            p.name: p.read_bytes()
            for p in (root / name).iterdir()
            if p.suffix in (".json", ".safetensors")
        }
        http.post(
            "/v1/adapters",
            data={"name": name, "labels": json.dumps(["a", "b"])},
            files={k: (k, v) for k, v in files.items()},
        ).raise_for_status()
