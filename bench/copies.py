"""64 tasks as 64 fully fine-tuned model copies behind transformers pipelines vs Switchyard.

What a team without Switchyard runs: one process holding a full copy of the model per task,
each behind a `transformers.pipeline("text-classification")`, and an HTTP route per task
(`--serve-copies`, started here as a subprocess). Switchyard serves the same tasks as rank-8
all-linear LoRA adapters on one shared base (`switchyard serve`, a subprocess too). Each side
runs alone in its own process, so its RSS (peak, VmHWM, and current after the load) is clean;
both get the same closed-loop clients sending each request to a random task.
Targets (issue 15): RSS copies / Switchyard inverted, i.e. Switchyard RSS <= 0.1x the copies',
and Switchyard req/s >= 2x the copies'.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import torch
import uvicorn
from fastapi import FastAPI
from peft import LoraConfig, TaskType, get_peft_model
from pydantic import BaseModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from bench._common import base_dir, tempdir
from bench.fewshot_data import sst2_sentences
from bench.http_mix import load
from tests.integration.conftest import free_port, start_server, stop_server


class Body(BaseModel):
    inputs: list[str]


def copies_app(base: Path, tasks: int) -> FastAPI:
    """`tasks` full copies of the base, each fine-tuned (here: perturbed) and behind a pipeline."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    pipes = {}
    for i in range(tasks):
        torch.manual_seed(i)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
        with torch.no_grad():
            for param in model.parameters():  # a fine-tuned copy: every weight its own
                param.add_(torch.randn_like(param), alpha=1e-3)
        model.eval()
        pipes[f"a{i}"] = pipeline("text-classification", model=model, tokenizer=tokenizer)
    lock = threading.Lock()  # one forward at a time, as the Switchyard engine does
    app = FastAPI()

    @app.post("/v1/adapters/{name}/predict")
    def predict(name: str, body: Body) -> dict[str, object]:
        with lock:
            return {"outputs": pipes[name](body.inputs)}

    @app.get("/health/ready")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def _lora_files(work: Path, tasks: int) -> list[dict[str, bytes]]:
    """`tasks` random rank-8 all-linear LoRAs on the base, from one PEFT model re-drawn."""
    model = AutoModelForSequenceClassification.from_pretrained(base_dir(), num_labels=2)
    peft = get_peft_model(
        model,
        LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, target_modules="all-linear"),
    )
    out = []
    for i in range(tasks):
        torch.manual_seed(i)
        for name, param in peft.named_parameters():
            if "lora_" in name or "classifier" in name:
                param.data.normal_(0, 0.02)
        folder = work / f"a{i}"
        peft.save_pretrained(str(folder))
        keep = (".json", ".safetensors")
        out.append({p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in keep})
    return out


def _rss(pid: int) -> tuple[float, float]:
    """(current, peak) resident MiB of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    return psutil.Process(pid).memory_info().rss / 2**20, peak / 1024


def _measure(url: str, pid: int, names: list[str], args: argparse.Namespace) -> tuple:
    texts = sst2_sentences()  # distinct inputs, as real traffic has
    load(url, names, clients=args.clients, seconds=3, texts=texts)  # warm every task
    rate = load(url, names, clients=args.clients, seconds=args.seconds, texts=texts)
    return rate, *_rss(pid)


def _copies_side(names: list[str], args: argparse.Namespace) -> tuple:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.copies", "--serve-copies", str(port)]
    process = subprocess.Popen([*cmd, "--tasks", str(args.tasks)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                if httpx.get(url + "/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        return _measure(url, process.pid, names, args)
    finally:
        process.terminate()
        process.wait(60)


def _switchyard_side(work: Path, names: list[str], args: argparse.Namespace) -> tuple:
    server = start_server(work / "store")
    try:
        for name, files in zip(names, _lora_files(work / "peft", args.tasks), strict=True):
            server.http.post(
                "/v1/adapters",
                data={"name": name, "labels": json.dumps(["a", "b"])},
                files={k: (k, v) for k, v in files.items()},
            ).raise_for_status()
        return _measure(server.url, server.process.pid, names, args)
    finally:
        stop_server(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--serve-copies", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_copies:
        app = copies_app(base_dir(), args.tasks)
        uvicorn.run(app, host="127.0.0.1", port=args.serve_copies, log_level="warning")
        return
    names = [f"a{i}" for i in range(args.tasks)]
    sy = _switchyard_side(tempdir(), names, args)
    cp = _copies_side(names, args)
    print(
        f"{args.tasks} tasks, {args.clients} clients, random task per request, {args.seconds:.0f} s"
    )
    for label, (rate, rss, peak) in (("model copies + pipelines", cp), ("switchyard adapters", sy)):
        print(f"{label:26s} {rate:6.1f} req/s  RSS {rss:7.0f} MiB (peak {peak:.0f} MiB)")
    print(
        f"RSS switchyard / copies: {sy[1] / cp[1]:.3f}x (peak {sy[2] / cp[2]:.3f}x; target <= 0.1x)"
        f"; req/s switchyard / copies: {sy[0] / cp[0]:.2f}x (target >= 2x)"
    )


if __name__ == "__main__":
    main()
