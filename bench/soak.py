"""Soak: a steady mixed workload (predict, upload, delete, small training jobs) against one
running service; prints RSS growth after warm-up, open file descriptors and threads (start and
end) and the error counts by status. Targets: RSS growth < 5 % after warm-up, descriptors and
threads flat, zero 5xx.

    python3 -m bench.soak --seconds 180            # the real packaged MiniLM (default)
    python3 -m bench.soak --seconds 60 --tiny      # a tiny random BERT, for a quick check

At most 10 minutes (`--seconds` is capped at 600).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from bench._common import base_dir, make_lora_files, tempdir
from tests.integration.conftest import start_server, stop_server

NAMES = ["soak-a", "soak-b", "soak-c"]
TRAINED = "soak-trained"
TEXTS = ["an intelligent and moving film", "a dull, lifeless mess", "ok", "great acting"]
TRAIN_HP = {"epochs": 1, "batch_size": 8, "max_steps": 4, "eval_every_steps": 2, "seed": 0}
ROWS = [
    {
        "text": f"{('good', 'great', 'bad', 'awful')[i % 4]} film {i}",
        "label": "pos" if i % 4 < 2 else "neg",
    }
    for i in range(24)
]


@dataclass
class Tally:
    """Statuses by operation, thread-safe."""

    counts: Counter[tuple[str, int]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: str, status: int) -> None:
        with self.lock:
            self.counts[(op, status)] += 1


@dataclass
class Sample:
    at: float
    rss: int
    fds: int
    threads: int


def _paced(every_s: float, stop: float, action: Callable[[random.Random], None], seed: int) -> None:
    """Call `action` every `every_s` seconds (a steady rate, not as fast as possible)."""
    rng = random.Random(seed)
    next_at = time.monotonic()
    while time.monotonic() < stop:
        action(rng)
        next_at += every_s
        time.sleep(max(0.0, next_at - time.monotonic()))


def _workload(
    url: str, files: dict[str, bytes], tally: Tally, stop: float
) -> list[threading.Thread]:
    http = httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=32))

    def call(op: str, method: str, path: str, **kwargs: object) -> httpx.Response | None:
        try:
            response = http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError:
            tally.add(op, 0)  # a transport failure counts as its own status
            return None
        tally.add(op, response.status_code)
        return response

    def predict(rng: random.Random) -> None:
        name = rng.choice([*NAMES, TRAINED])
        call(
            "predict", "POST", f"/v1/adapters/{name}/predict", json={"inputs": [rng.choice(TEXTS)]}
        )

    def upload(rng: random.Random) -> None:
        data = {"name": rng.choice(NAMES), "labels": json.dumps(["neg", "pos"])}
        call(
            "upload", "POST", "/v1/adapters", data=data, files={k: (k, v) for k, v in files.items()}
        )

    def delete(rng: random.Random) -> None:
        name = rng.choice([*NAMES, TRAINED])
        listed = call("get", "GET", f"/v1/adapters/{name}")
        if listed is not None and listed.status_code == 200:
            versions = [v["version"] for v in listed.json()["versions"]]
            # Keep the newest two: predicts keep finding something, and the store (and so the
            # cache's CPU tier) stays the same size, so RSS growth means a leak, not more data.
            if len(versions) > 2:
                call("delete", "DELETE", f"/v1/adapters/{name}?version={versions[0]}")
        call("list", "GET", "/v1/adapters")

    def train(_rng: random.Random) -> None:
        body = {
            "adapter": TRAINED,
            "task": "classification",
            "method": "lora",
            "examples": ROWS,
            "hyperparameters": TRAIN_HP,
        }
        job = call("train", "POST", "/v1/training-jobs", json=body)
        while job is not None and job.status_code in (200, 202) and time.monotonic() < stop:
            job = call("job", "GET", f"/v1/training-jobs/{job.json()['id']}")
            if job is None or job.json().get("status") in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(1.0)

    plan = [(predict, 0.1), (predict, 0.1), (upload, 2.0), (delete, 1.0), (train, 15.0)]
    return [
        threading.Thread(target=_paced, args=(every, stop, action, seed), daemon=True)
        for seed, (action, every) in enumerate(plan)
    ]


def _sample(process: psutil.Process, start: float) -> Sample:
    return Sample(
        time.monotonic() - start,
        process.memory_info().rss,
        process.num_fds(),
        process.num_threads(),
    )


def _tiny_base(work: Path) -> Path:
    from transformers import AutoTokenizer, BertModel

    from tests.conftest import MINILM_DIR, tiny_bert_config

    folder = work / "tiny-base"
    BertModel(tiny_bert_config()).save_pretrained(folder)
    AutoTokenizer.from_pretrained(MINILM_DIR).save_pretrained(folder)
    return folder


def _report(samples: list[Sample], warm_s: float, tally: Tally, seconds: float) -> None:
    warm = [s for s in samples if s.at >= warm_s] or samples
    first, last = warm[0], warm[-1]
    # Training jobs make RSS a sawtooth: compare medians of the first and last thirds after
    # warm-up rather than two single samples.
    third = max(1, len(warm) // 3)
    early = statistics.median(s.rss for s in warm[:third])
    late = statistics.median(s.rss for s in warm[-third:])
    growth = (late - early) / early * 100
    mib = 1024 * 1024
    print(f"soak: {seconds:.0f} s, warm-up {warm_s:.0f} s, {len(samples)} samples")
    print("RSS MiB: " + " ".join(f"{s.rss / mib:.0f}" for s in samples))
    print(
        f"RSS after warm-up: median of first third {early / mib:.0f} MiB, of last third "
        f"{late / mib:.0f} MiB, max {max(s.rss for s in warm) / mib:.0f} MiB: growth "
        f"{growth:+.1f} % (target < 5 %)"
    )
    print(f"open fds: start {samples[0].fds}, after warm-up {first.fds}, end {last.fds}")
    print(
        f"threads:  start {samples[0].threads}, after warm-up {first.threads}, end {last.threads}"
    )
    by_status = Counter[int]()
    for (op, status), n in sorted(tally.counts.items()):
        by_status[status] += n
        print(f"  {op:8s} {status}: {n}")
    print("by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(by_status.items())))
    print(
        f"5xx: {sum(n for s, n in by_status.items() if s >= 500)} (target 0); "
        f"transport errors: {by_status.get(0, 0)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--warmup", type=float, default=None, help="default: a quarter")
    parser.add_argument("--tiny", action="store_true", help="a tiny random BERT base")
    args = parser.parse_args()
    seconds = min(args.seconds, 600.0)
    warm_s = args.warmup if args.warmup is not None else seconds / 4
    work = tempdir()
    env = {"SWITCHYARD_BASE_MODEL": str(_tiny_base(work))} if args.tiny else {}
    base = Path(env["SWITCHYARD_BASE_MODEL"]) if args.tiny else base_dir()
    files = make_lora_files(base, work / "peft", seed=0, r=4)
    server = start_server(work / "store", env=env)
    tally = Tally()
    try:
        process = psutil.Process(server.process.pid)
        for name in NAMES:
            server.http.post(
                "/v1/adapters",
                data={"name": name, "labels": '["neg", "pos"]'},
                files={k: (k, v) for k, v in files.items()},
            ).raise_for_status()
        start = time.monotonic()
        samples = [_sample(process, start)]
        threads = _workload(server.url, files, tally, start + seconds)
        for thread in threads:
            thread.start()
        while time.monotonic() < start + seconds:
            time.sleep(min(5.0, max(0.0, start + seconds - time.monotonic())))
            samples.append(_sample(process, start))
        for thread in threads:
            thread.join(120)
        samples.append(_sample(process, start))
    finally:
        stop_server(server)
    _report(samples, warm_s, tally, seconds)


if __name__ == "__main__":
    main()
