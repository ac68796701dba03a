"""The gathered LoRA forms' first product, `x @ A^T` vs `(A @ x^T)^T`, per shape, in one run.

Both give the same [rows, tokens, r] numbers; `app.runtime.lora_products._first_product` picks
the second from 8 tokens a row. Each shape times both orders (and the second product that reads
the result) in alternating rounds; the ratio is the median of new / old per round. Shapes:
MiniLM's (384 and 1536 wide) at 64 rows of 18 tokens (bench/hetero_batch.py's batch) and
SmolLM2's (576, 192 and 1536) at 16 rows of 1 token (a decode step) and of 18 tokens.

    python -m bench.first_product
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

from bench._common import timeit

# (rows, tokens, in_features, out_features)
SHAPES = [
    (64, 18, 384, 384),
    (64, 18, 384, 1536),
    (64, 18, 1536, 384),
    (16, 1, 576, 576),
    (16, 1, 576, 1536),
    (16, 1, 1536, 576),
    (16, 18, 576, 192),
    (16, 18, 1536, 576),
]


def pair(
    rows: int, tokens: int, in_f: int, out_f: int, rank: int
) -> tuple[Callable[[], object], Callable[[], object]]:
    """The old and the new order of one layer's gathered products, on fresh tensors."""
    a = torch.randn(rows, rank, in_f)
    bt = torch.randn(rows, rank, out_f)
    x = torch.randn(rows, tokens, in_f)
    out = torch.randn(rows, tokens, out_f)

    def old() -> object:
        return out.baddbmm_(torch.bmm(x, a.transpose(1, 2)), bt)

    def new() -> object:
        return out.baddbmm_(torch.bmm(a, x.transpose(1, 2)).transpose(1, 2), bt)

    return old, new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=50, help="calls timed per round")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"rank {args.rank}, {args.threads} torch threads, {args.rounds} rounds")
    with torch.inference_mode():
        for rows, tokens, in_f, out_f in SHAPES:
            old, new = pair(rows, tokens, in_f, out_f, args.rank)
            ratios, olds, news = [], [], []
            for _ in range(args.rounds):
                o = sum(timeit(old, repeat=args.calls, warmup=2))
                n = sum(timeit(new, repeat=args.calls, warmup=2))
                olds.append(o / args.calls)
                news.append(n / args.calls)
                ratios.append(n / o)
            print(
                f"{rows:3d} rows x {tokens:2d} tokens, {in_f:4d} -> {out_f:4d}: "
                f"x @ A^T {1e6 * statistics.median(olds):7.1f} us, "
                f"(A @ x^T)^T {1e6 * statistics.median(news):7.1f} us, "
                f"new / old {statistics.median(ratios):.2f}x"
            )


if __name__ == "__main__":
    main()
