"""HTTP: requests/s with a random adapter out of 64 per request, vs one adapter, vs naive PEFT.

Three loads from the same concurrent clients, in the same run: (1) Switchyard, each request
to a random one of 64 adapters; (2) Switchyard, every request to one adapter; (3) a naive
server calling PEFT `set_adapter` per request (bench/naive_peft_server.py), random adapter.
Targets (issue 15): (1)/(2) >= 0.9x and (1)/(3) >= 10x.

Each request sends a different SST-2 sentence. With one fixed sentence the one-adapter load
measures a 1-row forward: the engine runs identical (adapter, tokens) rows once and shares the
result (app/runtime/engine.py `_distinct_rows`), so concurrent identical requests cost one row
while the mixed load still costs one row per adapter. `--same-text` shows that case.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import httpx

from bench._common import base_dir, make_lora_files, tempdir, upload_peft_folders
from bench.fewshot_data import sst2_sentences
from tests.integration.conftest import free_port, start_server, stop_server

TEXT = "an intelligent, moving and beautifully acted film about growing old"


def load(
    url: str,
    names: list[str],
    *,
    clients: int,
    seconds: float,
    texts: list[str] | None = None,
) -> float:
    """Requests/s over `seconds` from `clients` closed-loop clients, each request a random
    adapter of `names` and a random sentence of `texts` (default: the one TEXT)."""
    pool = texts or [TEXT]
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        rng = random.Random(i)
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < stop:
                body = {"inputs": [rng.choice(pool)]}
                r = http.post(f"/v1/adapters/{rng.choice(names)}/predict", json=body)
                r.raise_for_status()
                done[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapters", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20, help="per load, over all rounds")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N (default: SWITCHYARD_DEVICE)"
    )
    parser.add_argument(
        "--same-text", action="store_true", help="every request sends one fixed sentence"
    )
    args = parser.parse_args()
    texts = [TEXT] if args.same_text else sst2_sentences()
    work = tempdir()
    names = [f"a{i}" for i in range(args.adapters)]
    for i, name in enumerate(names):
        make_lora_files(base_dir(), work / "peft" / name, seed=i)
    server = start_server(
        work / "store", env={"SWITCHYARD_DEVICE": args.device} if args.device else None
    )
    upload_peft_folders(server.http, work / "peft", names)
    try:
        mixed, single = _alternate(server.url, names, args, texts)
    finally:
        stop_server(server)
    naive = _naive(work, names, args, texts)
    what = "one fixed sentence" if args.same_text else f"random of {len(texts)} SST-2 sentences"
    print(
        f"{args.clients} clients, 1 input per request ({what}), {args.seconds:.0f} s per load "
        f"in {args.rounds} alternating rounds (medians)"
    )
    print(f"switchyard, random of {args.adapters} adapters: {mixed:.1f} req/s")
    print(f"switchyard, one adapter:                 {single:.1f} req/s")
    print(f"naive PEFT set_adapter server, random:   {naive:.1f} req/s")
    print(
        f"mixed / single: {mixed / single:.2f}x (target >= 0.9x); "
        f"mixed / naive: {mixed / naive:.1f}x (target >= 10x)"
    )


def _alternate(
    url: str, names: list[str], args: argparse.Namespace, texts: list[str]
) -> tuple[float, float]:
    """Median req/s of the mixed and the one-adapter load, in alternating rounds (mixed,
    single, single, mixed, ...) so that the box's drift hits both alike."""
    run = partial(load, url, clients=args.clients, texts=texts)
    run(names, seconds=3)  # warm every slot
    part = args.seconds / args.rounds
    rates: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(args.rounds):
        for mixed in (True, False) if round_ % 2 == 0 else (False, True):
            rates[mixed].append(run(names if mixed else names[:1], seconds=part))
    return statistics.median(rates[True]), statistics.median(rates[False])


def _naive(work: Path, names: list[str], args: argparse.Namespace, texts: list[str]) -> float:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.naive_peft_server",
            str(base_dir()),
            str(work / "peft"),
            str(port),
        ]
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        load(url, names, clients=args.clients, seconds=3, texts=texts)
        return load(url, names, clients=args.clients, seconds=args.seconds, texts=texts)
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
