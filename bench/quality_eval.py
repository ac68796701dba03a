"""Scoring a served adapter on held-out rows through `/predict`, and bench/README.md's text."""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import sys
import time
from datetime import datetime
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from seqeval.metrics import f1_score as entity_f1
from sklearn.metrics import f1_score

from tests.integration.conftest import LiveServer

CHUNK = 64  # inputs per predict request


def predict(server: LiveServer, name: str, inputs: list[Any]) -> list[Any]:
    """Outputs for `inputs`, CHUNK at a time."""
    outputs: list[Any] = []
    for start in range(0, len(inputs), CHUNK):
        response = server.http.post(
            f"/v1/adapters/{name}/predict", json={"inputs": inputs[start : start + CHUNK]}
        )
        response.raise_for_status()
        outputs += response.json()["outputs"]
    return outputs


def evaluate_adapter(
    server: LiveServer, name: str, task: str, rows: list[dict[str, Any]]
) -> dict[str, float]:
    """The task's metrics of the served adapter on `rows`."""
    if task == "token_classification":
        return _token_metrics(server, name, rows)
    inputs = [
        {"text": r["text"], "text_pair": r["text_pair"]} if r.get("text_pair") else r["text"]
        for r in rows
    ]
    outputs = predict(server, name, inputs)
    if task == "regression":
        pred = [float(o["score"]) for o in outputs]
        gold = [float(r["label"]) for r in rows]
        return {
            "pearson": float(pearsonr(pred, gold)[0]),
            "spearman": float(spearmanr(pred, gold)[0]),
        }
    labels = [o[0]["label"] for o in outputs]
    gold_labels = [str(r["label"]) for r in rows]
    return {
        "accuracy": float(np.mean([p == g for p, g in zip(labels, gold_labels, strict=True)])),
        "macro_f1": float(f1_score(gold_labels, labels, average="macro")),
    }


def _token_metrics(server: LiveServer, name: str, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Entity F1 (seqeval) of the served entity groups mapped back onto the gold words."""
    texts, spans = [], []
    for row in rows:
        text, offsets, position = "", [], 0
        for token in row["tokens"]:
            offsets.append((position, position + len(token)))
            position += len(token) + 1
        text = " ".join(row["tokens"])
        texts.append(text)
        spans.append(offsets)
    outputs = predict(server, name, texts)
    predicted = [_tags(entities, offsets) for entities, offsets in zip(outputs, spans, strict=True)]
    gold = [list(row["tags"]) for row in rows]
    return {"entity_f1": float(entity_f1(gold, predicted))}


def _tags(entities: list[dict[str, Any]], offsets: list[tuple[int, int]]) -> list[str]:
    """BIO tags of the words each served entity (character span) covers."""
    tags = ["O"] * len(offsets)
    for entity in entities:
        inside = [
            i
            for i, (start, end) in enumerate(offsets)
            if start < entity["end"] and end > entity["start"]
        ]
        for n, index in enumerate(inside):
            tags[index] = ("B-" if n == 0 else "I-") + entity["entity_group"]
    return tags


def train_seconds_per_epoch(server: LiveServer, job: dict[str, Any]) -> float | None:
    """Seconds per epoch of the optimizer steps (and the evaluations between them), from the
    times of the job's first and last loss or evaluation events: no set-up, no LP-FT probe."""
    events, after = [], 0
    while True:
        page = server.http.get(
            f"/v1/training-jobs/{job['id']}/events", params={"after": after}
        ).json()
        events += page["data"]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    steps = [
        (datetime.fromisoformat(e["created_at"]), e["data"]["step"])
        for e in events
        if e["kind"] in ("loss", "evaluation") and e["data"].get("step")
    ]
    if len(steps) < 2:
        return None
    (first_t, first_step), (last_t, last_step) = steps[0], steps[-1]
    per_epoch_steps = math.ceil(job["rows"]["train"] / job["hyperparameters"]["batch_size"])
    epochs = (last_step - first_step) / per_epoch_steps
    return (last_t - first_t).total_seconds() / epochs if epochs > 0 else None


def command_line() -> str:
    """How this process was started, as a `python3 -m bench...` line."""
    return "python3 -m bench." + " ".join(
        shlex.quote(a) for a in [sys.argv[0].rsplit("/", 1)[-1][:-3], *sys.argv[1:]]
    )


def readme_section(table: str, args: argparse.Namespace, results: list[Any]) -> str:
    """bench/README.md's section for this benchmark: commands, machine, table, LoRA vs full FT
    (at equal rows). With --from-results the commands are those the results were made by."""
    commands = list(dict.fromkeys(r.command for r in results if r.command)) or [command_line()]
    ratios = []
    for r in results:
        if r.method == "lora" and r.train_per_epoch:
            ft = next(
                (
                    f
                    for f in results
                    if f.dataset == r.dataset
                    and f.rows == r.rows
                    and f.method == "full fine-tune"
                    and f.train_per_epoch
                ),
                None,
            )
            if ft:
                ratios.append(
                    f"{r.dataset}: LoRA {r.train_per_epoch:.0f} s/epoch, full "
                    f"fine-tune {ft.train_per_epoch:.0f} s/epoch "
                    f"({r.train_per_epoch / ft.train_per_epoch:.2f}x)"
                )
    lines = [
        "## bench/quality.py: adapters trained through the API vs full fine-tuning",
        "",
        f"Run {time.strftime('%Y-%m-%d')} on {platform.machine()} "
        f"({args.__dict__.get('machine') or 'CPU only'}):",
        "",
        "```",
        *commands,
        "```",
        "",
        table,
        "",
        "Training time per epoch (optimizer steps and the evaluations between them; the "
        "job's set-up and LP-FT probe are in `job s`):",
        "",
        *[f"- {line}" for line in ratios],
    ]
    return "\n".join(lines)
