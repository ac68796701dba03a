"""Rows for bench/fewshot.py: the shared classification sets and their seeded, stratified
training samples (K rows per class, or a fixed total) and capped held-out samples."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

Row = dict[str, Any]


@dataclass(frozen=True)
class SetSpec:
    """One classification set: its folder, training and held-out splits, the label field."""

    key: str
    name: str
    folder: str
    train: str
    test: str
    label_field: str = "label"


SETS = {
    "sst2": SetSpec("sst2", "SST-2", "sst2", "train", "dev"),
    "trec": SetSpec("trec", "TREC coarse", "trec", "train", "test"),
    "trec_fine": SetSpec("trec_fine", "TREC fine", "trec", "train", "test", "fine_label"),
    "sms_spam": SetSpec("sms_spam", "SMS spam", "sms_spam", "train", "test"),
    "cr": SetSpec("cr", "CR", "cr", "train", "test"),
    "rte": SetSpec("rte", "RTE", "rte", "train", "dev"),
}


def read_split(spec: SetSpec, split: str) -> list[Row]:
    """A split in the training API's row format: text, text_pair (pairs only) and the label
    (TREC fine: `fine_label` becomes `label`)."""
    rows: list[Row] = []
    for line in (DATASETS / spec.folder / f"{split}.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        raw = json.loads(line)
        row: Row = {"text": raw["text"], "label": str(raw[spec.label_field])}
        if raw.get("text_pair"):
            row["text_pair"] = raw["text_pair"]
        rows.append(row)
    return rows


def sst2_sentences(count: int = 872) -> list[str]:
    """Real review sentences (SST-2 dev), for load benches: distinct inputs, as real traffic
    has, so that the engine's sharing of identical rows does not flatter a one-adapter load."""
    return [row["text"] for row in read_split(SETS["sst2"], "dev")[:count]]


def _shuffled_groups(rows: list[Row], rng: random.Random) -> dict[str, list[Row]]:
    """Rows by label, labels sorted, each group shuffled by `rng` (in label order, so that a
    seed gives the same order at every size and smaller samples nest in larger ones)."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row["label"], []).append(row)
    out = {}
    for label in sorted(groups):
        group = list(groups[label])
        rng.shuffle(group)
        out[label] = group
    return out


@dataclass(frozen=True)
class Size:
    """A training size: `per_class` rows of each label (all of a smaller label), or a
    stratified `total`, or (both None) every training row."""

    per_class: int | None = None
    total: int | None = None

    @property
    def label(self) -> str:
        if self.per_class is not None:
            return f"{self.per_class}/class"
        return f"{self.total} rows" if self.total is not None else "all rows"

    @property
    def order(self) -> tuple[int, int]:
        """Sort key: per-class sizes first, then totals, then all rows."""
        if self.per_class is not None:
            return (0, self.per_class)
        return (1, self.total) if self.total is not None else (2, 0)

    def sample(self, rows: list[Row], seed: int) -> list[Row]:
        """The seeded, stratified training sample, in a seeded order."""
        rng = random.Random(seed)
        groups = _shuffled_groups(rows, rng)
        if self.per_class is not None:
            counts = {label: self.per_class for label in groups}
        else:
            counts = _allocate(groups, self.total if self.total is not None else len(rows))
        out = [row for label, group in groups.items() for row in group[: counts[label]]]
        rng.shuffle(out)
        return out


def _allocate(groups: dict[str, list[Row]], total: int) -> dict[str, int]:
    """Rows per label for a stratified sample of `total`: proportional shares, the rows left
    over by rounding down going to the largest remainders."""
    n = sum(len(g) for g in groups.values())
    if total >= n:
        return {label: len(g) for label, g in groups.items()}
    quotas = {label: total * len(g) / n for label, g in groups.items()}
    counts = {label: int(q) for label, q in quotas.items()}
    left = total - sum(counts.values())
    for label in sorted(quotas, key=lambda k: quotas[k] - counts[k], reverse=True)[:left]:
        counts[label] += 1
    return counts


def eval_sample(rows: list[Row], cap: int | None, seed: int) -> list[Row]:
    """At most `cap` held-out rows, a seeded uniform sample (the split's own label mix)."""
    if cap is None or cap <= 0 or len(rows) <= cap:
        return rows
    return random.Random(seed).sample(rows, cap)


def parse_sizes(per_class: str, totals: str) -> list[Size]:
    """`--sizes 8,16` and `--rows 1000,all` as Sizes, smallest first."""
    sizes = [Size(per_class=int(k)) for k in per_class.split(",") if k.strip()]
    for item in (t.strip() for t in totals.split(",")):
        if item:
            sizes.append(Size() if item == "all" else Size(total=int(item)))
    return sorted(set(sizes), key=lambda s: s.order)


def parse_seeds(text: str) -> list[int]:
    """`--seeds 3` is seeds 0, 1, 2; `--seeds 4,7` (any comma) names them."""
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    return list(range(int(text)))
