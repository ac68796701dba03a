"""`contrastive` on the real MiniLM: accuracy and seconds against a logistic regression on frozen
mean-pooled features, for a few learning rates; and the cost of one pair step against a
SetFit-style full fine-tuning step (to size the pair cap).

    python3 -m bench.contrastive_tune --set cr --per-class 8 --seeds 0,1 --lrs 3e-4,1e-3
    python3 -m bench.contrastive_tune --set trec --label fine_label --step-cost --steps 8

Calls `contrastive_adapter` directly (no HTTP, no job): the time is the method's own. Reads
../shared/datasets; one thread by default, to leave the box's other core to others.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel

from app.base import FrozenBase, load_base
from app.config import Settings
from app.tasks import CLASSIFICATION
from app.training import contrastive, methods
from app.training.encoding import Example, collate, encode_rows
from app.training.hyperparameters import Hyperparameters, fill_defaults
from app.training.loop import Ticker
from app.training.pooled import LAYERS, POOLING, PooledHeadModel
from app.training.probe import sentence_features
from app.training.types import CancelToken, TrainingPlan
from app.training.view import build_view

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
Row = dict[str, Any]


class Quiet:
    """A reporter that keeps the last step."""

    def progress(self, *, step: int, total_steps: int, epoch: float) -> None:
        self.step = step

    def event(self, kind: str, data: dict[str, Any]) -> None:
        pass


def read(name: str, split: str, label: str) -> list[Row]:
    rows = [json.loads(line) for line in (DATA / name / f"{split}.jsonl").open()]
    return [
        {**{k: v for k, v in r.items() if k in ("text", "text_pair")}, "label": r[label]}
        for r in rows
    ]


def per_class(rows: list[Row], count: int, seed: int) -> list[Row]:
    """`count` rows of every label (fewer where a label has fewer), seeded."""
    rng = random.Random(seed)
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(str(row["label"]), []).append(row)
    picked = [r for g in groups.values() for r in rng.sample(g, min(count, len(g)))]
    rng.shuffle(picked)
    return picked


def frozen_logreg(base: FrozenBase, train: list[Example], test: list[Example], rows: int) -> float:
    """Accuracy of a logistic regression on frozen mean-pooled features, its C cross-validated
    as the contrastive head's is."""
    backbone = getattr(build_view(base, task=CLASSIFICATION, num_labels=1), base.prefix)
    x, x_test = (
        sentence_features(
            backbone, ex, layers=list(LAYERS), pooling=POOLING, task=CLASSIFICATION,
            device=base.device, pad_id=0,
        )
        for ex in (train, test)
    )  # fmt: skip
    y = np.asarray([e.label for e in train])
    head, _c, _folds = contrastive._fit_head(x, y, rows=rows, tick=Ticker(CancelToken()))
    return float(np.mean((x_test @ head[0].T + head[1]).argmax(1) == [e.label for e in test]))


def run_contrastive(
    base: FrozenBase, plan: TrainingPlan, train: list[Example], test: list[Example], lr: float
) -> dict[str, Any]:
    hp = fill_defaults(
        Hyperparameters(learning_rate=lr, seed=int(plan.adapter.rsplit("-", 1)[-1])),
        method="contrastive",
        rows=len(train),
        lengths=[len(e.input_ids) for e in train],
        max_tokens=512,
    )
    spent: list[float] = []
    original = contrastive._features
    contrastive._features = _timed(original, spent)
    started = time.perf_counter()
    try:
        outcome = contrastive.contrastive_adapter(
            plan, base=base, hp=hp, train=train, val=test, reporter=Quiet(),
            tick=Ticker(CancelToken()), targets=None,
        )  # fmt: skip
    finally:
        contrastive._features = original
    # Training time: all but the features of the evaluation rows (the second call).
    seconds = time.perf_counter() - started - spent[1]
    best = outcome.best
    return {"accuracy": outcome.metrics["accuracy"], "seconds": round(seconds, 1),
            "pairs": best["pairs"], "steps": best["step"], "C": best["C"]}  # fmt: skip


def _timed(fn: Callable[..., Any], spent: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    return wrapper


Step = Callable[[list[contrastive.Pair]], None]


def step_cost(base: FrozenBase, train: list[Example], steps: int) -> dict[str, float]:
    """Seconds per batch of 16 pairs: this method's LoRA step against SetFit's."""
    labels = [int(e.label) for e in train]
    wanted = 16 * (steps + 1)  # a warm-up batch, then `steps` timed ones
    iterations = -(-wanted // (2 * len(labels)))
    pairs = contrastive.sample_pairs(labels, iterations=iterations, seed=0, max_pairs=wanted)
    batches = [pairs[i : i + 16] for i in range(0, len(pairs), 16)]
    out = {}
    for name, fn in (
        ("lora_pair_step_s", _lora_step(base, train)),
        ("setfit_like_step_s", _setfit_step(base, train)),
    ):
        fn(batches[0])  # warm-up
        started = time.perf_counter()
        for chunk in batches[1 : steps + 1]:
            fn(chunk)
        out[name] = round((time.perf_counter() - started) / steps, 3)
    return out


def _lora_step(base: FrozenBase, train: list[Example]) -> Step:
    """One optimizer step of this method (its own `_pair_step`)."""
    hp = fill_defaults(
        Hyperparameters(), method="contrastive", rows=len(train), lengths=[32], max_tokens=512
    )
    view = build_view(base, task=CLASSIFICATION, num_labels=2)
    peft: Any = methods.wrap(view, "lora", hp, CLASSIFICATION, base)
    model = PooledHeadModel(peft, backbone=base.prefix, task=CLASSIFICATION)
    params = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    model.train()

    def step(chunk: list[contrastive.Pair]) -> None:
        contrastive._pair_step(model, chunk, train, 0, base.device, hp, 1)
        optimizer.step()
        optimizer.zero_grad()

    return step


def _setfit_step(base: FrozenBase, train: list[Example]) -> Step:
    """SetFit's step: the whole body trainable, each side of the pairs encoded separately
    (sentence-transformers' CosineSimilarityLoss), AdamW at 2e-5."""
    full = AutoModel.from_pretrained(base.path).train()
    optimizer = torch.optim.AdamW(full.parameters(), lr=2e-5)

    def step(chunk: list[contrastive.Pair]) -> None:
        sides = []
        for rows in ([a for a, _b, _t in chunk], [b for _a, b, _t in chunk]):
            batch = collate(
                [train[r] for r in rows], task=CLASSIFICATION, pad_id=0, device=base.device
            )
            batch.pop("labels")
            hidden = full(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            sides.append((hidden * mask).sum(1) / mask.sum(1))
        target = torch.tensor([p[2] for p in chunk])
        F.mse_loss(F.cosine_similarity(*sides), target).backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def compare(base: FrozenBase, args: argparse.Namespace, seed: int) -> None:
    """Print the frozen baseline and each learning rate's run for one seeded sample."""
    rows, test_rows = read(args.set, "train", args.label), read(args.set, "test", args.label)
    labels = sorted({str(r["label"]) for r in rows})

    def encode(some: list[Row]) -> list[Example]:
        return encode_rows(some, base.tokenizer, task=CLASSIFICATION, labels=labels, max_length=128)

    train_rows = per_class(rows, args.per_class, seed)
    test = random.Random(1000 + seed).sample(test_rows, min(args.eval, len(test_rows)))
    train, test_ex = encode(train_rows), encode(test)
    head = f"{args.set}/{args.label} {args.per_class}/class ({len(train)} rows) seed {seed}"
    if args.step_cost:
        print(head, step_cost(base, train, args.steps), flush=True)
        return
    started = time.perf_counter()
    acc = round(frozen_logreg(base, train, test_ex, len(labels)), 3)
    seconds = round(time.perf_counter() - started, 1)
    print(head, "frozen logreg", {"accuracy": acc, "seconds_incl_eval": seconds}, flush=True)
    plan = TrainingPlan(
        adapter=f"bench-{seed}",
        task=CLASSIFICATION,
        method="contrastive",
        train_rows=train_rows,
        validation_rows=test,
        labels=labels,
    )
    for lr in (float(x) for x in args.lrs.split(",")):
        torch.manual_seed(seed)
        print(head, f"contrastive lr={lr:g}", run_contrastive(base, plan, train, test_ex, lr))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--set", default="cr")
    parser.add_argument("--label", default="label")
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--lrs", default="3e-4,1e-3,3e-3")
    parser.add_argument("--eval", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--step-cost", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_base(Settings(_env_file=None))
    for seed in (int(s) for s in args.seeds.split(",")):
        compare(base, args, seed)


if __name__ == "__main__":
    main()
