"""int8 frozen base (`SWITCHYARD_DTYPE=int8`) vs the float32 base: throughput and accuracy.

Speed, in process: the packaged MiniLM served by the runtime's encoder engine with one rank-8
all-linear LoRA, rows/s of `engine.run` at batch sizes 1, 8 and 64. Every variant is timed in
the same run, rounds interleaved (float, int8, ... float, int8, ...) so machine noise hits them
alike; the ratio is each variant's median over float32's. Variants: `int8` (what the setting
serves: every linear; 8-bit activations on CPUs with VNNI; oneDNN's kernels from 128 tokens
a call on CPUs with AMX, fbgemm's below), `int8-7bit` (torch's own module: 7-bit activations,
fbgemm), `int8-fbgemm` and `int8-onednn` (one kernel family for every call), `int8-ffn` (only
the feed-forward linears, 2/3 of the weights), and `bfloat16` (no int8: the whole base in
bfloat16).

Accuracy (`--accuracy`): one server on the float base trains a LoRA and a linear probe on
SST-2 and TREC through the API, scores them on held-out rows, then servers on the same store
with `SWITCHYARD_DTYPE=int8` (7-bit activations, then the default) score the very same adapters
(the fingerprint is the float one), and so does a `bfloat16` server (`--servers` picks).
`--retrain` also trains the recipes on each of those bases (on int8, QLoRA-style) and scores
those.

    python -m bench.int8 --repeat 5
    python -m bench.int8 --skip-speed --accuracy --train-rows 1000 --test-rows 500
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from app.base import FrozenBase, int8_plan, load_base
from app.config import Settings
from app.quantized import Int8Plan, cpu_flags, int8_bytes, quantize_linears
from app.registry.catalog import Registry
from app.registry.records import AdapterRef
from app.registry.store import AdapterStore
from app.runtime.engine import EncoderEngine, EncodeRequest
from app.runtime.metrics import Metrics
from app.runtime.runtime import Runtime
from bench._common import base_dir, make_lora_files, tempdir
from bench.fewshot_data import sst2_sentences

SENTENCES = sst2_sentences()
_SERVED = int8_plan(Settings(_env_file=None), flags=cpu_flags())  # what the setting serves
# How each variant's linear layers run; None: float32.
VARIANTS: dict[str, Int8Plan | None] = {
    "float32": None,
    "int8": _SERVED,
    "int8-7bit": Int8Plan(full_range=False),  # torch's own module: 7 bits, fbgemm only
    "int8-fbgemm": replace(_SERVED, onednn_from_tokens=0),
    "int8-onednn": replace(_SERVED, onednn_from_tokens=1),  # oneDNN for every call
    "int8-ffn": _SERVED,
    "bfloat16": None,  # the base loaded in bfloat16: CPUs with avx512_bf16 or AMX run it natively
}


@dataclass
class Served:
    """One variant's engine with the LoRA adapter registered."""

    name: str
    engine: EncoderEngine
    extra_bytes: int


def build(name: str, work: Path, files: dict[str, bytes]) -> Served:
    """A runtime over a fresh MiniLM, quantized as the variant says, with one LoRA."""
    dtype = "bfloat16" if name == "bfloat16" else "float32"
    settings = Settings(store=work / name, device="cpu", dtype=dtype, _env_file=None)
    base = load_base(settings)
    plan = VARIANTS[name]
    if plan is not None:
        quantize_linears(base.model, skip=_skip(base, ffn_only=name.endswith("-ffn")), plan=plan)
    registry = Registry(AdapterStore(settings.store), base, settings)
    runtime = Runtime(base, registry, settings, Metrics())
    registry.register(
        "lora",
        config_bytes=files["adapter_config.json"],
        weights_bytes=files["adapter_model.safetensors"],
        task="classification",
        labels=["a", "b"],
    )
    return Served(name, runtime.encoder, int8_bytes(base.model))


def _skip(base: FrozenBase, *, ffn_only: bool) -> frozenset[str]:
    if not ffn_only:
        return frozenset()
    # BERT's feed-forward pair: `intermediate.dense` and the layer's own `output.dense`.
    ffn = {
        p
        for p in base.linear_shapes
        if p.endswith("intermediate.dense") or (p.endswith("output.dense") and "attention" not in p)
    }
    return frozenset(set(base.linear_shapes) - ffn)


def rows_per_second(served: Served, rows: int, calls: int) -> float:
    """Rows/s of `calls` engine runs of `rows` rows on the LoRA adapter."""
    engine = served.engine
    job = EncodeRequest(
        key=AdapterRef("lora", 1),
        task="classification",
        # distinct sentences: identical rows would be run once (engine `_distinct_rows`)
        rows=engine.prepare(SENTENCES[:rows], task="classification"),
        raw=True,
    )
    engine.run([job])  # warm-up
    start = time.perf_counter()
    for _ in range(calls):
        result = engine.run([job])[0]
        assert result.error is None, result.error
    return rows * calls / (time.perf_counter() - start)


def speed(args: argparse.Namespace) -> None:
    """Interleaved rounds of every variant at every batch size; prints medians and ratios."""
    work = tempdir()
    files = make_lora_files(base_dir(), work / "peft", seed=0)
    served = [build(name, work, files) for name in args.variants]
    print(f"MiniLM-L6, {torch.get_num_threads()} threads, rank-8 all-linear LoRA, engine.run")
    for rows in args.batch_sizes:
        calls = max(1, args.rows_per_round // rows)
        times: dict[str, list[float]] = {s.name: [] for s in served}
        for _ in range(args.repeat):
            for s in served:
                times[s.name].append(rows_per_second(s, rows, calls))
        ref = statistics.median(times["float32"])
        for s in served:
            values = times[s.name]
            med = statistics.median(values)
            print(
                f"batch {rows:3d}  {s.name:12s} {med:8.1f} rows/s  x{med / ref:.2f} vs float32"
                f"  (min/max over {len(values)} rounds {min(values) / max(values):.2f})"
            )
    for s in served:
        if s.extra_bytes:
            print(f"{s.name}: int8 copies add {s.extra_bytes / 1e6:.1f} MB to the float weights")


def profile(args: argparse.Namespace) -> None:
    """Share of the forward spent in the linear kernels, float32 vs int8 (torch.profiler).

    The bound on what any int8 kernel can win: the rest (attention, norms, GELU, the LoRA
    deltas, batching) runs in float either way.
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    work = tempdir()
    files = make_lora_files(base_dir(), work / "peft", seed=0)
    for name in ("float32", "int8"):
        served = build(name, work, files)
        rows_per_second(served, args.profile_rows, 1)  # warm-up outside the profile
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            rows_per_second(served, args.profile_rows, 3)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        linear = sum(e.self_cpu_time_total for e in events if _is_linear_kernel(e.key))
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]
        print(f"{name}: batch {args.profile_rows}, linear kernels {linear / total:.0%} of op time")
        for e in top:
            print(f"    {e.key:40s} {e.self_cpu_time_total / total:6.1%}")


def _is_linear_kernel(key: str) -> bool:
    return key in {"aten::addmm", "aten::mm", "quantized::linear_dynamic"} or "quantize" in key


Adapter = tuple[str, str, list[dict[str, Any]], str]  # set name, method, test rows, adapter


# The servers that score the float-trained adapters, besides the float32 one.
SERVERS = {
    "int8 7-bit": {"SWITCHYARD_DTYPE": "int8", "SWITCHYARD_INT8_ACTIVATIONS": "7bit"},
    "int8": {"SWITCHYARD_DTYPE": "int8"},  # what the setting serves: 8-bit with VNNI
    "bfloat16": {"SWITCHYARD_DTYPE": "bfloat16"},
}


def accuracy(args: argparse.Namespace) -> None:
    """Train on the float base through the API and score on float and on each other server;
    with `--retrain`, also train the same recipes on each other base and score them there."""
    from tests.integration.conftest import start_server, stop_server

    work = tempdir()
    store = work / "store"
    server = start_server(store, env={"SWITCHYARD_DTYPE": "float32"})
    try:
        adapters = _train_all(server, work, args)
        scores = {a[3]: [_score(server, a)] for a in adapters}
    finally:
        stop_server(server)
    columns = ["float32"]
    for name in args.servers:
        server = start_server(store, env=SERVERS[name])
        try:
            columns.append(name)
            for adapter in adapters:
                scores[adapter[3]].append(_score(server, adapter))
            if args.retrain:
                columns.append(f"trained on {name}")
                on_server = _train_all(server, work, args)
                for adapter, own in zip(adapters, on_server, strict=True):
                    scores[adapter[3]].append(_score(server, own))
        finally:
            stop_server(server)
    header = "".join(f"{c:>26s}" for c in columns)
    print(f"{'dataset':8s} {'method':13s} {'test rows':>9s} {header}")
    for name, method, test, stored in adapters:
        f32, *others = scores[stored]
        cells = "".join(f"{v:15.2%} ({100 * (v - f32):+.2f} pt)" for v in others)
        print(f"{name:8s} {method:13s} {len(test):9d} {f32:26.2%}{cells}")


def _train_all(server: Any, work: Path, args: argparse.Namespace) -> list[Adapter]:
    """Every (set, method) of the run trained through the API on `server`."""
    from bench.quality import SPECS, read_rows, train_via_api, upload

    adapters: list[Adapter] = []
    for key in args.datasets:
        spec = SPECS[key]
        dataset = upload(server, work, key, read_rows(spec, spec.train, args.train_rows))
        test = read_rows(spec, spec.test, args.test_rows)
        for method in args.methods:
            hyper = {"epochs": args.epochs} if method != "linear_probe" else {}
            job = train_via_api(server, spec, method, dataset, hyper, args.job_timeout)
            assert job["status"] == "succeeded", job
            adapters.append((spec.name, method, test, job["result"]["adapter"]))
    return adapters


def _score(server: Any, adapter: Adapter) -> float:
    from bench import quality_eval

    _name, _method, test, name = adapter
    return float(quality_eval.evaluate_adapter(server, name, "classification", test)["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds per size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--rows-per-round", type=int, default=64)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--profile", action="store_true", help="linear kernels' share of time")
    parser.add_argument("--profile-rows", type=int, default=8)
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument("--retrain", action="store_true", help="also train on each other base")
    parser.add_argument("--datasets", nargs="+", default=["sst2", "trec"])
    parser.add_argument("--methods", nargs="+", default=["lora", "linear_probe"])
    parser.add_argument("--train-rows", type=int, default=1000)
    parser.add_argument("--test-rows", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--job-timeout", type=float, default=1800)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if "float32" not in args.variants:
        args.variants.insert(0, "float32")
    if not args.skip_speed:
        speed(args)
    if args.profile:
        profile(args)
    if args.accuracy:
        accuracy(args)


if __name__ == "__main__":
    main()
