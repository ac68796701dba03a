"""Scale: 1,000 registered adapters cost nothing at start-up; 100 resident cost their bytes.

Measures, in fresh subprocesses so RSS is clean: start-up time and RSS of a service with an
empty store vs a store of N registered adapters; then RSS with 100 of them resident vs the
base's RSS plus the adapters' bytes. Targets: start-up and RSS flat in N; resident RSS
within 1.2x of base + adapter bytes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench._common import base_dir, make_lora_files, make_runtime, tempdir

_PROBE = r"""
import json, os, sys, time, psutil
t0 = time.perf_counter()
from bench._common import make_runtime
runtime, registry, _ = make_runtime(__import__("pathlib").Path(sys.argv[1]))
runtime.encoder.warm_up()
names = registry.store.names()
started = time.perf_counter() - t0
rss0 = psutil.Process().memory_info().rss
resident = int(sys.argv[2])
nbytes = 0
for name in names[:resident]:
    r = runtime.cache.acquire(name, 1)
    nbytes += r.nbytes
    runtime.cache.release(r)
rss1 = psutil.Process().memory_info().rss
print(json.dumps({"adapters": len(names), "startup_s": started, "rss_mb": rss0 / 1e6,
                  "resident": resident, "adapter_mb": nbytes / 1e6, "rss_resident_mb": rss1 / 1e6}))
"""


def populate(store: Path, count: int, files: dict[str, bytes]) -> None:
    """Register `count` copies of one adapter under distinct names (validation included)."""
    _, registry, _ = make_runtime(store)
    for i in range(count):
        registry.register(
            f"a{i:04d}",
            config_bytes=files["adapter_config.json"],
            weights_bytes=files["adapter_model.safetensors"],
            task="classification",
            labels=["a", "b"],
        )


def probe(store: Path, resident: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(store), str(resident)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--resident", type=int, default=100)
    args = parser.parse_args()
    work = tempdir()
    files = make_lora_files(base_dir(), work / "a", seed=0)
    empty, full = work / "empty", work / "full"
    populate(empty, 0, files)
    populate(full, args.adapters, files)
    a, b = probe(empty, 0), probe(full, args.resident)
    print(f"empty store:   start-up {a['startup_s']:.2f} s, RSS {a['rss_mb']:.0f} MB")
    print(
        f"{int(b['adapters'])} adapters: start-up {b['startup_s']:.2f} s, RSS {b['rss_mb']:.0f} MB "
        f"(ratios {b['startup_s'] / a['startup_s']:.2f}x, {b['rss_mb'] / a['rss_mb']:.2f}x)"
    )
    budget = a["rss_mb"] + b["adapter_mb"]
    print(
        f"{args.resident} resident ({b['adapter_mb']:.0f} MB of adapters): RSS "
        f"{b['rss_resident_mb']:.0f} MB = {b['rss_resident_mb'] / budget:.2f}x of base + adapters "
        "(target <= 1.2x)"
    )


if __name__ == "__main__":
    main()
