"""Serving while training: inference p50 during a LoRA training job against idle, same run,
and how much the server's RSS grows during the job against the size of the base.

Starts `switchyard serve` (packaged MiniLM, CPU) on a temporary store, uploads a rank-8 LoRA
made with plain PEFT, then sends single-input predicts one after another: first idle, then
while a LoRA job trains on SST-2 rows (phase `running`, after its LP-FT probe). The server's
RSS is sampled every 0.1 s throughout. Target: p50 during training <= 3x idle; RSS growth far
below the base's size.

    python -m bench.train_contention --requests 40 --rows 2000
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench._common import base_dir, make_lora_files, tempdir
from tests.integration.conftest import LiveServer, start_server, stop_server

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
TEXTS = [
    "a gorgeous, witty, seductive movie",
    "the plot is a mess and the acting worse",
    "it is neither as funny nor as clever as it thinks",
    "an undeniably moving film",
]


class RssSampler(threading.Thread):
    """Samples a process's resident set size until stopped; `mark` starts a named phase."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.samples: dict[str, list[int]] = {"start": []}
        self.phase = "start"
        self.stopped = threading.Event()

    def mark(self, phase: str) -> None:
        """Samples from now on belong to `phase`."""
        self.samples.setdefault(phase, [])
        self.phase = phase

    def run(self) -> None:
        """Sample every 0.1 s until stopped."""
        while not self.stopped.wait(0.1):
            try:
                self.samples[self.phase].append(self.process.memory_info().rss)
            except psutil.Error:
                return


def predict_latencies(server: LiveServer, count: int) -> list[float]:
    """Wall times (s) of `count` sequential one-input predicts on the uploaded adapter."""
    times = []
    for i in range(count):
        start = time.perf_counter()
        response = server.http.post(
            "/v1/adapters/served/predict", json={"inputs": [TEXTS[i % len(TEXTS)]]}
        )
        times.append(time.perf_counter() - start)
        response.raise_for_status()
        time.sleep(0.05)  # a gap, so each request meets the trainer mid-step, not queued
    return times


def upload_adapter(server: LiveServer, work: Path) -> None:
    """A rank-8 LoRA made with plain PEFT, to predict with."""
    files = make_lora_files(base_dir(), work / "peft", seed=0)
    server.http.post(
        "/v1/adapters",
        data={"name": "served", "labels": json.dumps(["neg", "pos"])},
        files={k: (k, v) for k, v in files.items()},
    ).raise_for_status()


def start_job(server: LiveServer, rows: int) -> str:
    """A LoRA job on SST-2 rows, long enough to outlast the measurement; returns its id."""
    lines = (DATASETS / "sst2" / "train.jsonl").read_text().splitlines()[:rows]
    response = server.http.post(
        "/v1/training-jobs",
        json={
            "adapter": "trained",
            "method": "lora",
            "examples": [json.loads(x) for x in lines],
            "hyperparameters": {"epochs": 20},
        },
    )  # long enough to outlast the measurement
    response.raise_for_status()
    return str(response.json()["id"])


def wait_running(server: LiveServer, job_id: str, timeout: float = 1800) -> dict[str, Any]:
    """Until the job has taken its first optimizer step (its probe phase is over)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = server.http.get(f"/v1/training-jobs/{job_id}").json()
        if job["status"] in ("failed", "cancelled", "succeeded"):
            raise RuntimeError(f"job ended before the measurement: {job}")
        if job["status"] == "running" and (job["progress"]["step"] or 0) >= 1:
            return dict(job)
        time.sleep(0.5)
    raise RuntimeError("the job did not start in time")


def steps_alone(server: LiveServer, job_id: str, *, seconds: float) -> float:
    """The job's optimizer steps per second while nobody sends requests."""
    first = server.http.get(f"/v1/training-jobs/{job_id}").json()["progress"]["step"] or 0
    time.sleep(seconds)
    last = server.http.get(f"/v1/training-jobs/{job_id}").json()["progress"]["step"] or 0
    return (last - first) / seconds


def main() -> None:
    """Start the service, measure, stop it."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--rows", type=int, default=2000, help="SST-2 rows the job trains on")
    parser.add_argument(
        "--alone-s",
        type=float,
        default=20.0,
        help="seconds of training without requests, for its pace",
    )
    args = parser.parse_args()
    work = tempdir()
    server = start_server(work / "store")
    sampler = RssSampler(server.process.pid)
    sampler.start()
    try:
        report(server, sampler, work, args)
    finally:
        sampler.stopped.set()
        stop_server(server)


def report(server: LiveServer, sampler: RssSampler, work: Path, args: argparse.Namespace) -> None:
    """Idle predicts, predicts during the job, the job alone; print latencies and RSS."""
    upload_adapter(server, work)
    predict_latencies(server, 5)  # warm: the adapter resident, the code paths taken
    sampler.mark("idle")
    idle = predict_latencies(server, args.requests)
    job_id = start_job(server, args.rows)
    sampler.mark("probe")
    wait_running(server, job_id)
    sampler.mark("training")
    steps_before = server.http.get(f"/v1/training-jobs/{job_id}").json()["progress"]["step"]
    started = time.monotonic()
    busy = predict_latencies(server, args.requests)
    elapsed = time.monotonic() - started
    job = server.http.get(f"/v1/training-jobs/{job_id}").json()
    alone = steps_alone(server, job_id, seconds=args.alone_s)
    server.http.post(f"/v1/training-jobs/{job_id}/cancel")
    sampler.mark("after")
    time.sleep(3)  # the cancelled job's memory given back
    base = server.http.get("/v1/info").json()["base_model"]
    base_bytes = int(base["parameters"]) * 4  # float32 on CPU
    steps = (job["progress"]["step"] or 0) - (steps_before or 0)
    idle_p50, busy_p50 = statistics.median(idle), statistics.median(busy)
    print(
        f"base: {base['name']}, {base['parameters'] / 1e6:.1f} M parameters, "
        f"{base_bytes / 2**20:.0f} MiB as float32, device {base['device']}"
    )
    print(
        f"job: LoRA on {args.rows} SST-2 rows, {steps} optimizer steps during "
        f"{elapsed:.1f} s of measured requests ({steps / elapsed:.2f} steps/s)"
    )
    print(f"the same job with no requests: {alone:.2f} steps/s")
    print(f"predict p50 idle:           {1000 * idle_p50:8.1f} ms  (p90 {1000 * _p90(idle):.1f})")
    print(f"predict p50 while training: {1000 * busy_p50:8.1f} ms  (p90 {1000 * _p90(busy):.1f})")
    print(f"ratio: {busy_p50 / idle_p50:.2f}x (target <= 3x)")
    print(
        "phases: probe = the job's LP-FT feature pass and fit; training = optimizer steps; "
        "after = 3 s after the cancel"
    )
    idle_rss = statistics.median(sampler.samples["idle"])
    for phase in ("probe", "training", "after"):
        peak = max(sampler.samples[phase] or [int(idle_rss)])
        print(
            f"RSS peak {phase:>8}: {peak / 2**20:5.0f} MiB = idle {idle_rss / 2**20:.0f} MiB "
            f"+{(peak - idle_rss) / 2**20:.0f} MiB ({(peak - idle_rss) / base_bytes:.2f}x the "
            f"base)"
        )
    held = statistics.median(sampler.samples["training"] or [int(idle_rss)])
    print(
        f"RSS median training: {held / 2**20:.0f} MiB = idle +{(held - idle_rss) / 2**20:.0f} "
        f"MiB ({(held - idle_rss) / base_bytes:.2f}x the base; the heap is trimmed each step)"
    )


def _p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))]


if __name__ == "__main__":
    main()
