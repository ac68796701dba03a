"""Memory and pace of a training job by micro-batch size and activation checkpointing.

Each configuration runs in its own fresh process (the allocator keeps what an earlier run
freed, so runs must not share one): load the packaged base, run one forward (serving's
warm-up), then train a LoRA with the service's trainer for a fixed number of steps on SST-2
rows (no LP-FT probe, so only the optimizer steps are measured). RSS is sampled every 5 ms;
growth is the peak over the RSS just before training, reported against the base's size.

    python3 -m bench.train_memory --steps 30 --rows 1000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
CONFIGS = [(None, False), (None, True), (512, False), (512, True), (128, False), (128, True)]


def rss() -> int:
    """Resident bytes of this process."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def one_run(budget: int | None, recompute: bool, steps: int, rows: int) -> dict[str, Any]:
    """Train in this process; the measurements as a dict."""
    from app.base import load_base
    from app.config import Settings
    from app.training import trainer
    from app.training.types import CancelToken, TrainingPlan

    base = load_base(Settings())
    data = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sst2" / "train.jsonl"
    lines = data.read_text().splitlines()
    train = [json.loads(x) for x in lines[:rows]]
    val = [json.loads(x) for x in lines[rows : rows + 64]]
    plan = TrainingPlan(
        adapter="m",
        task="classification",
        method="lora",
        train_rows=train,
        validation_rows=val,
        labels=sorted({r["label"] for r in train}),
        hyperparameters={
            "max_steps": steps,
            "head_init": "random",
            "batch_size": 32,
            "max_length": 64,
            "dropout": 0.0,
        },
    )
    idle = rss()
    peak, stop = [idle], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    reporter = _Steps()
    trainer.train(
        plan,
        base=base,
        reporter=reporter,
        cancel=CancelToken(),
        max_rank=64,
        max_tokens=512,
        checkpoint_activations=recompute,
        micro_batch_tokens=budget,
    )
    stop.set()
    thread.join()
    base_bytes = sum(p.numel() * p.element_size() for p in base.model.parameters())
    return {
        "budget": budget,
        "recompute": recompute,
        "idle_mib": idle / MIB,
        "growth_mib": (peak[0] - idle) / MIB,
        "base_mib": base_bytes / MIB,
        "s_per_step": reporter.seconds_per_step(),
    }


class _Steps:
    """A reporter that times optimizer steps (from the second on: the first warms caches)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def progress(self, *, step: int, total_steps: int, epoch: float) -> None:
        self.times.append(time.perf_counter())

    def event(self, kind: str, data: dict[str, Any]) -> None:
        pass

    def seconds_per_step(self) -> float:
        if len(self.times) < 3:
            return float("nan")
        return (self.times[-1] - self.times[1]) / (len(self.times) - 2)


def main() -> None:
    """Each configuration in a child process; a table of growth and pace."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        budget, recompute = args.child.split(",")
        tokens = int(budget) if budget != "whole" else None
        print(json.dumps(one_run(tokens, recompute == "1", args.steps, args.rows)))
        return
    results = []
    for budget, recompute in CONFIGS:
        out = (
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.train_memory",
                    "--steps",
                    str(args.steps),
                    "--rows",
                    str(args.rows),
                    "--child",
                    f"{budget or 'whole'},{int(recompute)}",
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        results.append(json.loads(out))
        print(out, flush=True)
    first = results[0]
    print(f"base {first['base_mib']:.0f} MiB; idle RSS {first['idle_mib']:.0f} MiB")
    print("| micro-batch tokens | recompute | RSS growth MiB | x base | s/step | x first |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['budget'] or 'whole batch'} | {r['recompute']} | {r['growth_mib']:.0f} | "
            f"{r['growth_mib'] / r['base_mib']:.2f} | {r['s_per_step']:.3f} | "
            f"{r['s_per_step'] / first['s_per_step']:.2f} |"
        )


if __name__ == "__main__":
    main()
