"""Open-loop load test at a fixed arrival rate against a loopback Switchyard.

Request i is sent at t0 + i / rate whatever happened to the earlier ones (open loop), to a
random adapter, so a slow server shows up as growing latency and as 429s, not as a politely
lower offered load. Latency runs from the scheduled send time (no coordinated omission).
Reports offered and achieved rates, p50/p90/p99/max latency and counts by status.

Bounded: at most MAX_DURATION_S of sending, MAX_REQUESTS requests and MAX_IN_FLIGHT open at
once (over that a request is counted `client_overflow`, not sent), then at most `--grace`
seconds for the stragglers. Loopback only: any other host is refused.

    python -m bench.load --spawn --adapters 8 --rate 20 --duration 20
    python -m bench.load --url http://127.0.0.1:8000 --rate 50 --duration 30 --key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

MAX_DURATION_S = 120.0
MAX_REQUESTS = 20_000
MAX_IN_FLIGHT = 2_000
TEXTS = [
    "an intelligent, moving and beautifully acted film about growing old",
    "the plot never makes sense and the jokes fall flat",
    "ok",
    "I would happily watch it again with the whole family this weekend",
]


@dataclass
class Results:
    """What the run saw: latencies of answered requests and counts by outcome."""

    latencies_ok: list[float] = field(default_factory=list)
    latencies_all: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    first_scheduled: float = 0.0
    last_done: float = 0.0


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def run_load(
    url: str,
    names: list[str],
    *,
    rate: float,
    duration: float,
    requests: int,
    inputs: int,
    key: str | None,
    timeout: float,
    grace: float,
    seed: int,
) -> Results:
    """Send `requests` predicts at `rate`/s (at most `duration` s) and wait for the answers."""
    rng = random.Random(seed)
    results = Results()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=256)
    in_flight: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=timeout, limits=limits
    ) as client:

        async def one(name: str, body: dict[str, Any], scheduled: float) -> None:
            try:
                response = await client.post(f"/v1/adapters/{name}/predict", json=body)
                outcome = str(response.status_code)
            except httpx.TimeoutException:
                outcome = "timeout"
            except httpx.HTTPError as exc:
                outcome = f"error:{type(exc).__name__}"
            done = time.perf_counter()
            latency = done - scheduled
            results.outcomes[outcome] += 1
            results.latencies_all.append(latency)
            if outcome.startswith("2"):
                results.latencies_ok.append(latency)
            results.last_done = max(results.last_done, done)

        start = time.perf_counter() + 0.05
        results.first_scheduled = start
        count = min(requests, int(rate * duration))
        for index in range(count):
            scheduled = start + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= MAX_IN_FLIGHT:
                results.outcomes["client_overflow"] += 1
                continue
            body = {"inputs": [rng.choice(TEXTS) for _ in range(inputs)]}
            task = asyncio.create_task(one(rng.choice(names), body, scheduled))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            _done, pending = await asyncio.wait(set(in_flight), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                results.outcomes["unfinished"] += len(pending)
    return results


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summarize(results: Results, *, rate: float, adapters: int) -> dict[str, Any]:
    sent = sum(results.outcomes.values())
    ok = len(results.latencies_ok)
    window = max(results.last_done - results.first_scheduled, 1e-9)
    ms = [x * 1000 for x in results.latencies_ok]
    return {
        "adapters": adapters,
        "offered_rps": rate,
        "requests": sent,
        "ok": ok,
        "throughput_ok_rps": round(ok / window, 2),
        "window_s": round(window, 2),
        "latency_ok_ms": {
            "p50": round(percentile(ms, 0.50), 1),
            "p90": round(percentile(ms, 0.90), 1),
            "p99": round(percentile(ms, 0.99), 1),
            "max": round(max(ms), 1) if ms else None,
            "mean": round(statistics.fmean(ms), 1) if ms else None,
        },
        "by_status": dict(sorted(results.outcomes.items())),
    }


def spawn(adapters: int, env: dict[str, str]) -> tuple[Any, list[str]]:
    """Start a server on a temporary store and upload `adapters` random rank-8 LoRAs."""
    from bench._common import base_dir, make_lora_files, tempdir
    from tests.integration.conftest import start_server

    work = tempdir()
    names = [f"load{i}" for i in range(adapters)]
    files = [
        make_lora_files(base_dir(), work / "peft" / name, seed=i) for i, name in enumerate(names)
    ]
    server = start_server(work / "store", env=env)
    for name, parts in zip(names, files, strict=True):
        server.http.post(
            "/v1/adapters",
            data={"name": name, "labels": json.dumps(["neg", "pos"])},
            files={k: (k, v) for k, v in parts.items()},
        ).raise_for_status()
    return server, names


def existing_adapters(url: str, key: str | None) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(f"{url}/v1/adapters", headers=headers, timeout=30)
    response.raise_for_status()
    return [item["name"] for item in response.json()["data"] if item.get("task") != "generation"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--spawn",
        action="store_true",
        help="start a server on a temporary store instead of using --url",
    )
    parser.add_argument("--adapters", type=int, default=8, help="random adapters for --spawn")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="SWITCHYARD_* setting for the spawned server (repeatable)",
    )
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of sending")
    parser.add_argument("--requests", type=int, default=MAX_REQUESTS, help="at most this many")
    parser.add_argument("--inputs", type=int, default=1, help="inputs per request")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--grace", type=float, default=30.0, help="wait for stragglers, seconds")
    parser.add_argument("--key", help="API key (Bearer)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)
    if not 0 < args.rate <= 1000 or args.duration <= 0 or args.requests < 1:
        parser.error("need 0 < --rate <= 1000, --duration > 0, --requests >= 1")
    duration = min(args.duration, MAX_DURATION_S)
    requests = min(args.requests, MAX_REQUESTS)
    server = None
    if args.spawn:
        env = dict(item.split("=", 1) for item in args.env)
        server, names = spawn(args.adapters, env)
        url = server.url
    else:
        url = args.url.rstrip("/")
        if not is_loopback(url):
            print(f"refusing {url}: load tests run against loopback only", file=sys.stderr)
            return 2
        names = existing_adapters(url, args.key)
        if not names:
            print(f"{url} serves no adapters; upload some or use --spawn", file=sys.stderr)
            return 2
    try:
        results = asyncio.run(
            run_load(
                url,
                names,
                rate=args.rate,
                duration=duration,
                requests=requests,
                inputs=args.inputs,
                key=args.key,
                timeout=args.timeout,
                grace=min(args.grace, 120),
                seed=args.seed,
            )
        )
    finally:
        if server is not None:
            from tests.integration.conftest import stop_server

            stop_server(server)
    summary = summarize(results, rate=args.rate, adapters=len(names))
    if args.json:
        print(json.dumps(summary))
        return 0
    lat = summary["latency_ok_ms"]
    print(
        f"{summary['requests']} requests at {args.rate:g}/s offered over {duration:g} s to "
        f"{len(names)} adapters ({args.inputs} input each), open loop"
    )
    print(f"throughput (2xx): {summary['throughput_ok_rps']} req/s over {summary['window_s']} s")
    print(f"latency 2xx ms: p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}")
    print(f"by status: {summary['by_status']}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
