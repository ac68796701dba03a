"""Linear probes share one base pass: /v1/predict with 5 probe adapters vs one adapter's request.

Head-only adapters leave the base forward unchanged, so the engine forwards identical rows
once and applies every probe's head to the shared features. Measured in-process through the
HTTP app (TestClient), both loads in the same run. Target: 5 probes <= 1.3x one probe.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save as st_save

from app.config import Settings
from app.main import create_app
from bench._common import p50, tempdir, timeit

TEXTS = [f"review number {i}: the pacing drags but the performances carry it" for i in range(32)]


def probe_files(hidden: int, seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    config = {
        "peft_type": "LINEAR_PROBE",
        "layers": [-1],
        "pooling": "mean",
        "task_type": "FEATURE_EXTRACTION",
    }
    tensors = {
        "classifier.weight": torch.tensor(rng.normal(size=(3, hidden)), dtype=torch.float32),
        "classifier.bias": torch.zeros(3),
    }
    return {
        "adapter_config.json": json.dumps(config).encode(),
        "adapter_model.safetensors": st_save(tensors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    settings = Settings(store=tempdir() / "store", _env_file=None)
    with TestClient(create_app(settings)) as client:
        hidden = client.get("/v1/info").json()["base_model"]["hidden_size"]
        names = [f"probe{i}" for i in range(args.probes)]
        for i, name in enumerate(names):
            files = probe_files(hidden, i)
            client.post(
                "/v1/adapters",
                data={"name": name, "labels": '["a","b","c"]'},
                files={k: (k, v) for k, v in files.items()},
            ).raise_for_status()
        one = timeit(
            lambda: client.post(
                f"/v1/adapters/{names[0]}/predict", json={"inputs": TEXTS}
            ).raise_for_status(),
            repeat=args.repeat,
        )
        many = timeit(
            lambda: client.post(
                "/v1/predict", json={"adapters": names, "inputs": TEXTS}
            ).raise_for_status(),
            repeat=args.repeat,
        )
    print(f"{len(TEXTS)} inputs per request")
    print(f"one probe adapter:      p50 {1000 * p50(one):.1f} ms")
    print(f"{args.probes} probes via /v1/predict: p50 {1000 * p50(many):.1f} ms")
    print(f"ratio: {p50(many) / p50(one):.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
