"""Scale-out on Ray Serve, in one run: what Ray's proxy costs, what a cold multiplexed load
adds, and two replicas against one.

Three services over the same packaged MiniLM base and the same closed-loop clients, each
request to a random one of `--adapters` adapters: (1) the plain single-process service;
(2) `switchyard serve --replicas 1` (ingress + one runtime replica on local Ray); (3) the same
with `--replicas 2`. Target: (2)/(1) >= 0.8x. On this 2-core machine (3) shows Ray's overhead
of running two copies of the base on the same cores, not a gain; see bench/README.md for the
arithmetic on N machines. The cold-load figure is the p50 latency of each adapter's first
request on (2), minus the warm p50 there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench._common import base_dir, make_lora_files, tempdir
from bench.http_mix import TEXT, load
from tests.integration.conftest import REPO, free_port, start_server, stop_server


def upload(url: str, peft: Path, names: list[str]) -> None:
    """POST each adapter's PEFT files."""
    with httpx.Client(base_url=url, timeout=120) as http:
        for name in names:
            files = {p.name: (p.name, p.read_bytes()) for p in (peft / name).iterdir()}
            data = {"name": name, "task": "classification", "labels": '["neg", "pos"]'}
            files = {k: v for k, v in files.items() if k != "README.md"}
            http.post("/v1/adapters", data=data, files=files).raise_for_status()


def latency_ms(url: str, name: str) -> float:
    """One request's wall time."""
    with httpx.Client(base_url=url, timeout=120) as http:
        start = time.perf_counter()
        http.post(f"/v1/adapters/{name}/predict", json={"inputs": [TEXT]}).raise_for_status()
        return (time.perf_counter() - start) * 1000


def rss_mb(pid: int) -> float:
    """Resident memory of one process, in MiB."""
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / 2**20


def replicas_rss_mb() -> float:
    """Resident memory of all Switchyard runtime replicas (Ray worker processes), in MiB."""
    import psutil

    total = 0.0
    for process in psutil.process_iter(["cmdline", "memory_info"]):
        if "ServeReplica:switchyard:Runtime" in " ".join(process.info["cmdline"] or []):
            total += process.info["memory_info"].rss
    return total / 2**20


def start_ray(store: Path, replicas: int, env: dict[str, str]) -> tuple[str, subprocess.Popen]:
    """`switchyard serve --replicas N`, waited on until ready."""
    port = free_port()
    environ = {**os.environ, **env, "SWITCHYARD_STORE": str(store), "SWITCHYARD_PORT": str(port)}
    command = [sys.executable, "-m", "app.cli", "serve", "--replicas", str(replicas)]
    process = subprocess.Popen(
        [*command, "--log-level", "warning"],
        cwd=REPO,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                return url, process
        except httpx.TransportError:
            pass
        time.sleep(1)
    process.kill()
    raise RuntimeError(f"--replicas {replicas} not ready in time")


def stop_ray(process: subprocess.Popen) -> None:
    """SIGINT: the CLI shuts Serve and Ray down."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(120)
    except subprocess.TimeoutExpired:
        process.kill()


def pg_schema() -> str:
    """A fresh schema on the local PostgreSQL for the Ray runs' shared catalog."""
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    return f"postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{name}"


def ray_run(work: Path, replicas: int, names: list[str], args: argparse.Namespace) -> dict:
    """Requests/s (and, for one replica, cold and warm latencies) under --replicas N."""
    store = Path(tempfile.mkdtemp(dir=work))
    env = {
        "SWITCHYARD_DATABASE_URL": pg_schema(),
        "RAY_AUTH_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    url, process = start_ray(store, replicas, env)
    try:
        upload(url, work / "peft", names)
        cold = [latency_ms(url, name) for name in names]  # each adapter's first request
        warm = [latency_ms(url, names[0]) for _ in range(20)]
        rps = load(url, names, clients=args.clients, seconds=args.seconds)
        memory = replicas_rss_mb() / replicas
    finally:
        stop_ray(process)
    return {
        "rps": rps,
        "cold_p50_ms": statistics.median(cold),
        "warm_p50_ms": statistics.median(warm),
        "replica_rss_mb": memory,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    work = tempdir()
    names = [f"a{i}" for i in range(args.adapters)]
    for i, name in enumerate(names):
        make_lora_files(base_dir(), work / "peft" / name, seed=i)
    server = start_server(work / "plain-store")
    try:
        upload(server.url, work / "peft", names)
        latency_ms(server.url, names[0])
        plain = load(server.url, names, clients=args.clients, seconds=args.seconds)
        plain_rss = rss_mb(server.process.pid)
    finally:
        stop_server(server)
    one = ray_run(work, 1, names, args)
    two = ray_run(work, 2, names, args)
    result = {
        "cpus": os.cpu_count(),
        "adapters": args.adapters,
        "clients": args.clients,
        "seconds": args.seconds,
        "plain_rps": round(plain, 1),
        "ray_1_replica_rps": round(one["rps"], 1),
        "ray_1_over_plain": round(one["rps"] / plain, 2),
        "cold_load_extra_p50_ms": round(one["cold_p50_ms"] - one["warm_p50_ms"], 1),
        "warm_p50_ms_ray": round(one["warm_p50_ms"], 1),
        "ray_2_replicas_rps": round(two["rps"], 1),
        "ray_2_over_1": round(two["rps"] / one["rps"], 2),
        "plain_rss_mb": round(plain_rss),
        "runtime_replica_rss_mb": round(one["replica_rss_mb"]),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
