"""The columns of bench/fewshot.py: a logistic regression on frozen features (in this
process), the `setfit` library (bench/setfit_runner.py in a subprocess) and the service's
methods (through the HTTP API of a spawned server). Each returns an Outcome."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from transformers import AutoModel, AutoTokenizer

from bench import quality_eval
from bench._common import wait_for_job
from bench.fewshot_data import Row
from tests.integration.conftest import LiveServer

SERVICE_METHODS = ("linear_probe", "lora", "contrastive", "auto")
LOGREG_CS = (0.01, 0.1, 1.0, 10.0, 100.0)
MAX_LENGTH = 256  # the base's sentence-transformers max_seq_length
INLINE_ROWS = 2000  # larger training sets are uploaded as a dataset


@dataclass
class Outcome:
    """One column's result on one sample: predictions (None unless ok) and fit seconds."""

    status: str  # ok | n/a | failed
    predictions: list[str] | None = None
    seconds: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Encoder:
    """The frozen base: mean-pooled (attention-masked) last-layer features; pairs through the
    tokenizer's pair encoding."""

    def __init__(self, folder: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()

    @torch.inference_mode()
    def encode(self, rows: list[Row], batch: int = 64) -> np.ndarray:
        chunks = []
        for start in range(0, len(rows), batch):
            part = rows[start : start + batch]
            pairs = [r.get("text_pair") or "" for r in part] if "text_pair" in part[0] else None
            enc = self.tokenizer(
                [r["text"] for r in part],
                pairs,
                padding=True,
                truncation=True,
                max_length=MAX_LENGTH,
                return_tensors="pt",
            )
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            chunks.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
        return np.concatenate(chunks)


def logreg(encoder: Encoder, train: list[Row], eval_x: np.ndarray) -> Outcome:
    """LogisticRegressionCV over C in LOGREG_CS (stratified k-fold, k = min(5, rows of the
    smallest label)); C = 1.0 when a label has a single row. Seconds: train features + fit."""
    started = time.perf_counter()
    x = encoder.encode(train)
    y = [r["label"] for r in train]
    folds = min(5, min(Counter(y).values()))
    if len(set(y)) < 2:
        return Outcome("failed", error="a single label in the training rows")
    clf: LogisticRegression | LogisticRegressionCV
    if folds >= 2:
        clf = LogisticRegressionCV(
            Cs=list(LOGREG_CS),
            cv=StratifiedKFold(folds, shuffle=True, random_state=0),
            scoring="accuracy",
            l1_ratios=(0.0,),
            max_iter=2000,
            use_legacy_attributes=False,
        ).fit(x, y)
        c, how = float(np.ravel(clf.C_)[0]), f"{folds}-fold CV"
    else:
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
        c, how = 1.0, "fixed (a label has one row)"
    seconds = time.perf_counter() - started
    predictions = [str(p) for p in clf.predict(eval_x)]
    return Outcome("ok", predictions, seconds, extra={"C": c, "C_choice": how})


def setfit_available(python: str) -> str | None:
    """None when `python` imports setfit, else why not."""
    probe = subprocess.run(
        [python, "-c", "import setfit"], capture_output=True, text=True, timeout=300
    )
    if probe.returncode == 0:
        return None
    tail = probe.stderr.strip().splitlines()[-1:] or ["?"]
    return f"setfit not importable by {python}: {tail[0]} (pip install -e '.[fewshot-bench]')"


def setfit(
    python: str,
    folder: Path,
    train: list[Row],
    evaluate: list[Row],
    seed: int,
    work: Path,
    **kw: Any,
) -> Outcome:
    """The setfit library in a subprocess (bench/setfit_runner.py); its own fit seconds."""
    source, target, log = work / "setfit-in.json", work / "setfit-out.json", work / "setfit.log"
    target.unlink(missing_ok=True)
    spec = {"model": str(folder), "train": train, "eval": evaluate, "seed": seed}
    source.write_text(json.dumps(spec | {k: v for k, v in kw.items() if k != "timeout"}))
    with open(log, "w", encoding="utf-8") as sink:
        try:
            done = subprocess.run(
                [python, "-m", "bench.setfit_runner", str(source), str(target)],
                cwd=Path(__file__).resolve().parents[1],
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=kw.get("timeout"),
            )
        except subprocess.TimeoutExpired:
            return Outcome("failed", error=f"setfit over {kw.get('timeout')} s")
    if done.returncode != 0 or not target.exists():
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        return Outcome("failed", error=f"setfit_runner exit {done.returncode}: {tail[-400:]}")
    out = json.loads(target.read_text())
    extra = {"pairs": out["pairs"], "versions": out["versions"]}
    return Outcome("ok", out["predictions"], out["seconds"], extra=extra)


def _submit(server: LiveServer, body: dict[str, Any], rows: list[Row], work: Path) -> Any:
    """POST the job: rows inline as `examples`, or uploaded as a dataset when large."""
    if len(rows) <= INLINE_ROWS:
        return server.http.post("/v1/training-jobs", json=body | {"examples": rows})
    path = work / f"{body['adapter']}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    uploaded = server.http.post(
        "/v1/datasets", files={"file": (path.name, path.read_bytes())}, data={"name": path.stem}
    )
    uploaded.raise_for_status()
    dataset = uploaded.json()["id"]
    return server.http.post("/v1/training-jobs", json=body | {"training_data": dataset})


def service(
    server: LiveServer,
    method: str,
    name: str,
    train: list[Row],
    evaluate: list[Row],
    work: Path,
    timeout: float,
) -> Outcome:
    """A job with default hyperparameters (`auto`: `method` omitted), then /predict.
    Seconds: submit to seeing the job succeeded (polled each second)."""
    body: dict[str, Any] = {"adapter": name, "task": "classification"}
    if method != "auto":
        body["method"] = method
    started = time.monotonic()
    response = _submit(server, body, train, work)
    if response.status_code != 202:
        return Outcome("n/a", error=f"{response.status_code}: {response.text[:300]}")
    job = response.json()
    if method == "auto" and job.get("method") not in (None, "auto"):
        server.http.post(f"/v1/training-jobs/{job['id']}/cancel")
        return Outcome("n/a", error=f"method omitted ran {job.get('method')!r}: no auto yet")
    job = wait_for_job(server.http, job["id"], timeout)
    seconds = time.monotonic() - started
    if job["status"] != "succeeded":
        return Outcome("failed", error=json.dumps(job.get("error"))[:300], seconds=seconds)
    inputs = [_input(r) for r in evaluate]
    outputs = quality_eval.predict(server, job["result"]["adapter"], inputs)
    keep = ("id", "method", "best", "hyperparameters", "candidates", "rows", "progress")
    return Outcome("ok", [_top(o) for o in outputs], seconds, extra={k: job.get(k) for k in keep})


def _input(row: Row) -> Any:
    return (
        {"text": row["text"], "text_pair": row["text_pair"]} if "text_pair" in row else row["text"]
    )


def _top(output: Any) -> str:
    """The top label of one classification output (a list of {label, score}, or one)."""
    first = output[0] if isinstance(output, list) else output
    return str(first["label"])
