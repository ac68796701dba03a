"""The baseline for bench/http_mix.py: a naive server that calls PEFT `set_adapter` per request.

This is what a team writes without a multi-adapter runtime: one PeftModel holding every
adapter, a lock (set_adapter is global state), set_adapter + forward per request.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from peft import PeftModel
from pydantic import BaseModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer


class Body(BaseModel):
    inputs: list[str]


def build(base: Path, adapters: Path) -> FastAPI:
    names = sorted(p.name for p in adapters.iterdir() if p.is_dir())
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    peft = PeftModel.from_pretrained(model, adapters / names[0], adapter_name=names[0])
    for name in names[1:]:
        peft.load_adapter(str(adapters / name), adapter_name=name)
    peft.eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    lock = threading.Lock()
    app = FastAPI()

    @app.post("/v1/adapters/{name}/predict")
    def predict(name: str, body: Body) -> dict[str, object]:
        batch = tokenizer(body.inputs, padding=True, return_tensors="pt")
        with lock, torch.inference_mode():
            peft.set_adapter(name)
            probs = torch.softmax(peft(**batch).logits, dim=-1)
        return {"outputs": probs.tolist()}

    @app.get("/health/ready")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


if __name__ == "__main__":
    uvicorn.run(
        build(Path(sys.argv[1]), Path(sys.argv[2])),
        host="127.0.0.1",
        port=int(sys.argv[3]),
        log_level="warning",
    )
