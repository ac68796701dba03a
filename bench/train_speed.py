"""A LoRA epoch against a full fine-tuning epoch on the same rows, same process, alternating.

On SST-2 rows (../shared/datasets) and the packaged MiniLM: the full fine-tune is
bench/full_ft.py's; LoRA is the service's recipe (app/training/recipe.py: LP-FT head, one
evaluation an epoch) at batch 32 like the full fine-tune, once with every linear layer adapted
(the default) and once with `upper_layers` N (the layers below computed once per run,
app/training/lower_cache.py). Each prints seconds per epoch (training and its evaluations; the
LoRA run's LP-FT probe and lower-layer cache included, spread over its epochs), the ratio to
the full fine-tune's epoch of the same round, and accuracy on SST-2 dev rows. Rounds alternate
the order of the runs; the spread over rounds is the noise. `--bf16` adds both LoRA runs again
under bfloat16 autocast (`SWITCHYARD_TRAIN_DTYPE=bfloat16`).

    python -m bench.train_speed --rows 600 --epochs 1 --rounds 2          # timing
    python -m bench.train_speed --rows 2000 --epochs 3 --rounds 1 --test-rows 872  # quality
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from app.base import FrozenBase, load_base
from app.config import Settings
from app.training import evaluation
from app.training.hyperparameters import fill_defaults
from app.training.loop import Ticker
from app.training.preflight import preflight
from app.training.recipe import Recipe
from app.training.rows import derive_labels
from app.training.selection import rule_for
from app.training.split import holdout_split
from app.training.types import CancelToken, TrainingPlan
from bench.full_ft import full_finetune
from bench.quality import SPECS, read_rows

TASK = "classification"


class _Quiet:
    def progress(self, *, step: int, total_steps: int, epoch: float) -> None:
        pass

    def event(self, kind: str, data: dict[str, Any]) -> None:
        pass


def lora_run(
    base: FrozenBase,
    rows: list[dict[str, Any]],
    test: list[dict[str, Any]],
    *,
    epochs: int,
    upper: int | None,
    bf16: bool = False,
) -> dict[str, Any]:
    """The service's LoRA recipe on `rows` (the same held-out split as full_ft); test accuracy.
    `bf16`: the forward under bfloat16 autocast, as `SWITCHYARD_TRAIN_DTYPE=bfloat16` runs it."""
    base.train_dtype = torch.bfloat16 if bf16 else None
    train_rows, val_rows = holdout_split(rows, TASK)
    hyper: dict[str, Any] = {"epochs": epochs, "batch_size": 32, "selection": "validation_metric"}
    if upper is not None:
        hyper["upper_layers"] = upper
    plan = TrainingPlan(
        adapter="bench", task=TASK, method="lora", train_rows=train_rows,
        validation_rows=val_rows, labels=derive_labels(rows, TASK), hyperparameters=hyper,
    )  # fmt: skip
    setup = preflight(plan, base=base, max_rank=64, max_tokens=512)
    lengths = [len(base.tokenizer(r["text"])["input_ids"]) for r in train_rows]
    hp = fill_defaults(
        setup.hp, method="lora", rows=len(train_rows), lengths=lengths, max_tokens=512
    )
    recipe = Recipe(plan, base, setup, hp, Ticker(CancelToken()))
    torch.manual_seed(hp.seed)
    train_ex, val_ex, test_ex = (recipe.encode(part) for part in (train_rows, val_rows, test))
    started = time.monotonic()
    fitted = recipe.fit(train_ex, val_ex, rule=rule_for(plan, hp), reporter=_Quiet())
    seconds = time.monotonic() - started
    metrics = evaluation.evaluate(
        fitted.model, test_ex, task=TASK, labels=plan.labels, pad_id=0,
        device=base.device, batch_size=64,
    )  # fmt: skip
    return {"seconds": seconds, "accuracy": metrics["accuracy"]}


def full_run(rows: list[dict[str, Any]], test: list[dict[str, Any]], *, epochs: int) -> Any:
    """bench/full_ft.py's full fine-tune: seconds and test accuracy."""
    out = full_finetune(TASK, rows, test, epochs=epochs, learning_rate=5e-5)
    return {"seconds": out["seconds"], "accuracy": out["metrics"]["accuracy"]}


def main() -> None:
    """Rounds of (full, lora, lora upper N) in alternating order; a table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=600, help="SST-2 training rows")
    parser.add_argument("--test-rows", type=int, default=200, help="SST-2 dev rows scored")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--upper", type=int, default=3, help="upper_layers of the fast LoRA")
    parser.add_argument("--bf16", action="store_true", help="also LoRA under bfloat16 autocast")
    args = parser.parse_args()
    spec = SPECS["sst2"]
    rows, test = read_rows(spec, spec.train, args.rows), read_rows(spec, spec.test, args.test_rows)
    base = load_base(Settings())
    runs = {
        "full": lambda: full_run(rows, test, epochs=args.epochs),
        "lora": lambda: lora_run(base, rows, test, epochs=args.epochs, upper=None),
        f"lora upper {args.upper}": lambda: lora_run(
            base, rows, test, epochs=args.epochs, upper=args.upper
        ),
    }
    if args.bf16:
        runs["lora bf16"] = lambda: lora_run(
            base, rows, test, epochs=args.epochs, upper=None, bf16=True
        )
        runs[f"lora upper {args.upper} bf16"] = lambda: lora_run(
            base, rows, test, epochs=args.epochs, upper=args.upper, bf16=True
        )
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    for round_ in range(args.rounds):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
        for name in order:
            out = runs[name]()
            out["per_epoch"] = out["seconds"] / args.epochs
            results[name].append(out)
            line = f"{out['per_epoch']:.1f} s/epoch, accuracy {out['accuracy']:.4f}"
            print(f"round {round_ + 1} {name}: {line}", flush=True)
    _table(results, args)


def _table(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    full = [r["per_epoch"] for r in results["full"]]
    print(f"\nSST-2, {args.rows} rows, {args.epochs} epoch(s), {args.rounds} round(s), MiniLM")
    print("| run | s/epoch (median, min-max) | x full FT (per round) | dev accuracy |")
    print("|---|---|---|---|")
    for name, outs in results.items():
        secs = [r["per_epoch"] for r in outs]
        ratios = ", ".join(f"{s / f:.2f}" for s, f in zip(secs, full, strict=True))
        accs = ", ".join(f"{r['accuracy']:.3f}" for r in outs)
        print(
            f"| {name} | {statistics.median(secs):.1f} ({min(secs):.1f}-{max(secs):.1f}) "
            f"| {ratios} | {accs} |"
        )


if __name__ == "__main__":
    main()
