"""Heterogeneous batch: 64 rows on 64 distinct LoRA adapters vs the bare base, same batch
(`--rows` and `--adapters` set the two independently; rows cycle through the adapters).

Both are timed in this run on the same wrapped model: the bare forward routes every row to
slot 0 (no adapter), the mixed forward routes row i to adapter i. PEFT's own mixed batch
(`adapter_names=`) is timed too, as the reference the design note quotes (about 3x).
Target: mixed / bare <= 1.10x (issue 15). `--forms` also times each product form
forced (app/runtime/lora_products.py), which is how the cost model's choice was checked.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from bench._common import base_dir, make_lora_files, make_runtime, p50, tempdir, timeit

SENTENCE = "the film is a sprawling, ambitious and often moving portrait of a family in crisis"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapters", type=int, default=64)
    parser.add_argument(
        "--rows", type=int, default=0, help="batch rows, cycling the adapters (0: --adapters)"
    )
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--skip-peft", action="store_true")
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N (default: SWITCHYARD_DEVICE)"
    )
    parser.add_argument(
        "--forms", default="auto", help="comma list of auto, segments, stacked, gather"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = tempdir()
    # max_slots must cover the replica's adapter count (16) even for a few adapters
    slots = max(args.adapters, 16)
    runtime, registry, _ = make_runtime(work / "store", device=args.device, max_slots=slots)
    names = []
    for i in range(args.adapters):
        files = make_lora_files(base_dir(), work / f"a{i}", seed=i)
        registry.register(
            f"a{i}",
            config_bytes=files["adapter_config.json"],
            weights_bytes=files["adapter_model.safetensors"],
            task="classification",
            labels=["a", "b"],
        )
        names.append(f"a{i}")
    residents = [runtime.cache.acquire(n, 1) for n in names]
    rows = args.rows or args.adapters
    encoded = runtime.base.tokenizer([SENTENCE] * rows, return_tensors="pt")
    batch = {k: v.to(runtime.base.device) for k, v in encoded.items()}
    model, layers = runtime.base.model, runtime.layers

    def forward(slots: list[int], form: str = "auto") -> None:
        layers.route(slots, runtime.base.device)
        layers.ctx.form = None if form == "auto" else form  # type: ignore[assignment]
        with torch.inference_mode():
            model(**batch)
        if runtime.base.device.type == "cuda":
            torch.cuda.synchronize()  # else the timer stops at the kernel launches
        layers.clear_route()

    # sorted by slot, as the engine orders a batch's rows
    mixed_slots = sorted(residents[i % len(residents)].slot for i in range(rows))
    forms = args.forms.split(",")
    bare: list[float] = []
    mixed: dict[str, list[float]] = {form: [] for form in forms}
    for _ in range(args.repeat):  # interleaved so machine noise hits both alike
        bare += timeit(lambda: forward([0] * len(mixed_slots)), repeat=1, warmup=1)
        for form in forms:
            mixed[form] += timeit(partial(forward, mixed_slots, form), repeat=1, warmup=1)
    print(
        f"batch: {rows} rows x {batch['input_ids'].shape[1]} tokens, "
        f"{args.adapters} distinct rank-8 all-linear LoRA adapters, {args.repeat} rounds, "
        f"{torch.get_num_threads()} torch threads"
    )
    print(f"bare base forward:        p50 {1000 * p50(bare):.1f} ms")
    for form, times in mixed.items():
        ratios = sorted(m / b for m, b in zip(times, bare, strict=True))
        print(
            f"switchyard mixed ({form}): p50 {1000 * p50(times):.1f} ms; "
            f"ratio mixed / bare: {p50(times) / p50(bare):.3f}x (target <= 1.10x), "
            f"per-round ratios p10 {ratios[len(ratios) // 10]:.3f} "
            f"p90 {ratios[(9 * len(ratios)) // 10]:.3f}"
        )
    if not args.skip_peft:
        _peft_reference(work, names, batch, p50(bare))


def _peft_reference(work, names, batch, bare: float) -> None:  # type: ignore[no-untyped-def]
    model = AutoModelForSequenceClassification.from_pretrained(base_dir(), num_labels=2)
    peft = PeftModel.from_pretrained(model, work / names[0], adapter_name=names[0])
    for name in names[1:]:
        peft.load_adapter(str(work / name), adapter_name=name)
    peft.eval()

    def forward() -> None:
        with torch.inference_mode():
            peft(**batch, adapter_names=names)

    times = timeit(forward, repeat=5, warmup=1)
    print(
        f"peft adapter_names mixed: p50 {1000 * p50(times):.1f} ms "
        f"({p50(times) / bare:.2f}x the bare forward)"
    )


if __name__ == "__main__":
    main()
