"""A/B of two serving configurations over HTTP: two servers, same adapters, alternating loads.

Serving settings (packing, threads, batching) are judged by requests/s under a random-adapter
load, and on a shared 2-core box one load after another differs by 30% from noise alone. So
both servers stay up and short loads alternate between them (A, B, B, A, ...); each round's
B/A ratio compares loads seconds apart, and the median over rounds is reported.

    python -m bench.server_ab --b SWITCHYARD_PACK_MAX_TOKENS=0 --rounds 8
    python -m bench.server_ab --a OMP_NUM_THREADS=2 --b OMP_NUM_THREADS=1
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench._common import base_dir, make_lora_files, tempdir, upload_peft_folders
from bench.fewshot_data import sst2_sentences
from bench.http_mix import load
from tests.integration.conftest import LiveServer, start_server, stop_server


def _env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--a/--b take KEY=VALUE, not {pair!r}")
        out[key] = value
    return out


def _serve(work: Path, name: str, env: dict[str, str], names: list[str]) -> LiveServer:
    server = start_server(work / f"store-{name}", env=env)
    upload_peft_folders(server.http, work / "peft", names)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--a", nargs="*", default=[], help="KEY=VALUE env of server A")
    parser.add_argument("--b", nargs="*", default=[], help="KEY=VALUE env of server B")
    parser.add_argument("--adapters", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    work = tempdir()
    names = [f"a{i}" for i in range(args.adapters)]
    for i, name in enumerate(names):
        make_lora_files(base_dir(), work / "peft" / name, seed=i)
    texts = sst2_sentences()
    servers = {
        "A": _serve(work, "a", _env(args.a), names),
        "B": _serve(work, "b", _env(args.b), names),
    }
    rates: dict[str, list[float]] = {"A": [], "B": []}
    try:
        for server in servers.values():
            load(server.url, names, clients=args.clients, seconds=2, texts=texts)  # warm
        for round_ in range(args.rounds):
            for key in ("A", "B") if round_ % 2 == 0 else ("B", "A"):
                url = servers[key].url
                rates[key].append(
                    load(url, names, clients=args.clients, seconds=args.seconds, texts=texts)
                )
    finally:
        for server in servers.values():
            stop_server(server)
    _report(rates, args)


def _report(rates: dict[str, list[float]], args: argparse.Namespace) -> None:
    """Medians per server and the median of the per-round B / A ratios."""
    ratios = sorted(b / a for a, b in zip(rates["A"], rates["B"], strict=True))
    print(f"A: {args.a or 'defaults'}  B: {args.b or 'defaults'}")
    print(
        f"{args.clients} clients, random of {args.adapters} adapters, distinct sentences, "
        f"{args.rounds} rounds of {args.seconds:.0f} s"
    )
    for key, values in rates.items():
        spread = f"min {min(values):.1f}, max {max(values):.1f}"
        print(f"{key}: median {statistics.median(values):.1f} req/s ({spread})")
    print(
        f"B / A per round: median {statistics.median(ratios):.3f}x "
        f"(min {ratios[0]:.3f}, max {ratios[-1]:.3f})"
    )


if __name__ == "__main__":
    main()
