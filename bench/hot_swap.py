"""Hot-swap: p50 time to make a store-resident rank-8 all-linear MiniLM LoRA ready to serve.

Ours: read the safetensors, check it, copy it into a free slot (`AdapterCache.acquire` from
disk). Baseline, same run: PEFT's `load_adapter` (module injection) on a PeftModel.
Target: <= 5 ms and >= 20x faster.
"""

from __future__ import annotations

import argparse
import time

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from bench._common import base_dir, make_lora_files, make_runtime, p50, tempdir, timeit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N (default: SWITCHYARD_DEVICE)"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = tempdir()
    runtime, registry, _ = make_runtime(work / "store", device=args.device)
    files = make_lora_files(base_dir(), work / "a0", seed=0)
    size = len(files["adapter_model.safetensors"])
    version = registry.register(
        "hot",
        config_bytes=files["adapter_config.json"],
        weights_bytes=files["adapter_model.safetensors"],
        task="classification",
        labels=["a", "b"],
    )
    cache = runtime.cache

    def ours() -> float:
        start = time.perf_counter()
        resident = cache.acquire("hot", version)
        elapsed = time.perf_counter() - start
        cache.release(resident)
        cache.drop("hot")  # back to disk only: the next acquire reads the file again
        return elapsed

    ours_times = [ours() for _ in range(args.repeat + 3)][3:]
    model = AutoModelForSequenceClassification.from_pretrained(base_dir(), num_labels=2)
    peft = PeftModel.from_pretrained(model, work / "a0", adapter_name="warm")
    counter = iter(range(10**6))

    def baseline() -> None:
        name = f"a{next(counter)}"
        peft.load_adapter(str(work / "a0"), adapter_name=name)
        peft.delete_adapter(name)

    peft_times = timeit(baseline, repeat=max(10, args.repeat // 3))
    ours_ms, peft_ms = 1000 * p50(ours_times), 1000 * p50(peft_times)
    print(f"adapter file: {size / 1e6:.2f} MB, rank 8, all linear layers of MiniLM")
    print(f"switchyard acquire from store: p50 {ours_ms:.2f} ms")
    print(f"peft load_adapter:             p50 {peft_ms:.2f} ms")
    print(f"speed-up: {peft_ms / ours_ms:.1f}x (target >= 20x, and <= 5 ms)")


if __name__ == "__main__":
    main()
