"""Domain adaptation (issue 17): what a language-modelling adapter on unlabeled in-domain text
does, on the real packaged bases, through the HTTP API of spawned servers, in one run.

- Decoder: SmolLM2's held-out perplexity before and after a causal-LM LoRA on the rest of a
  shared set's texts (SMS messages by default). The job measures both on its held-out slice
  (every 20th document); the numbers are the job's step-0 and best evaluations.
- Encoder: for each set (SMS spam, TREC coarse) an MLM LoRA on the set's unlabeled training
  texts (labels dropped), on the packaged all-MiniLM-L6-v2 (no MLM head in its folder: a new
  tied head trains with the LoRA and is discarded). Then, for K rows per class and each seed,
  a task LoRA with `base_adapter` (the stack) and one without, both on the same rows; accuracy
  on the same held-out test sample, and the job's own `domain_effect`.
- Each adaptation gives its seconds (submit to succeeded), the server's peak RSS (VmHWM) and
  its tokens per second (training tokens the job counted / seconds).

No local MLM-pretrained encoder folder comes from a PyPI package this project can install
offline, so the encoder column is the packaged MiniLM only.

    python3 -m bench.domain                                  # defaults below
    python3 -m bench.domain --sets sms_spam --shots 8 --seeds 1 --mlm-steps 100 --clm-steps 60
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import quality_eval
from bench._common import tempdir, wait_for_job
from bench.fewshot_data import SETS, Row, Size, eval_sample, read_split
from tests.integration.conftest import LiveServer, start_server, stop_server

RESULTS = Path(__file__).resolve().parent / "results" / "domain.jsonl"


@dataclass(frozen=True)
class Adaptation:
    """One language-modelling job: what it cost and what it measured."""

    base: str
    corpus: str
    documents: int
    seconds: float
    peak_rss_mib: float
    tokens: int
    tokens_per_second: float
    before: dict[str, Any]
    after: dict[str, Any]


@dataclass(frozen=True)
class Effect:
    """One few-shot task trained with and without the domain adapter under it."""

    corpus: str
    shots: int
    seed: int
    with_domain: float
    without_domain: float
    job_effect: dict[str, Any] | None


def peak_rss_mib(server: LiveServer) -> float:
    """The server process's peak resident set (VmHWM), MiB."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait(server: LiveServer, job_id: str, timeout: float) -> dict[str, Any]:
    """The job once it ends; a job that ran over `timeout` stops the bench."""
    job = wait_for_job(server.http, job_id, timeout)
    if job["status"] == "timed_out":
        raise RuntimeError(f"job {job_id} ran over {timeout} s")
    return job


def upload_corpus(server: LiveServer, texts: list[str], work: Path, name: str) -> str:
    """The texts as a plain-text upload, one document a line; returns the dataset id."""
    path = work / f"{name}.txt"
    path.write_text("".join(" ".join(t.split()) + "\n" for t in texts))
    with path.open("rb") as handle:
        response = server.http.post(
            "/v1/datasets", files={"file": (path.name, handle, "text/plain")}, data={"name": name}
        )
    response.raise_for_status()
    return str(response.json()["id"])


def adapt(
    server: LiveServer, *, base: str, corpus: str, texts: list[str], steps: int, work: Path
) -> tuple[str, Adaptation]:
    """Train a language-modelling LoRA on `texts`; returns its adapter name and its record."""
    adapter = f"{corpus}-lm"
    dataset = upload_corpus(server, texts, work, adapter)
    body = {
        "adapter": adapter,
        "task": "language_modeling",
        "method": "lora",
        "training_data": dataset,
        "hyperparameters": {"max_steps": steps, "batch_size": 16, "max_length": 64},
    }
    started = time.monotonic()
    response = server.http.post("/v1/training-jobs", json=body)
    response.raise_for_status()
    job = wait(server, response.json()["id"], timeout=3600)
    seconds = time.monotonic() - started
    if job["status"] != "succeeded":
        raise RuntimeError(f"{adapter}: {json.dumps(job.get('error'))[:300]}")
    tokens = int(job["progress"]["step"])  # this task's progress counts training tokens
    history = job["metrics"]
    best = min(history[1:] or history, key=lambda m: m.get("loss", float("inf")))
    record = Adaptation(
        base=base,
        corpus=corpus,
        documents=len(texts),
        seconds=round(seconds, 1),
        peak_rss_mib=round(peak_rss_mib(server), 1),
        tokens=tokens,
        tokens_per_second=round(tokens / seconds, 1),
        before=history[0],
        after=best,
    )
    return str(job["result"]["adapter"]), record


def task_job(
    server: LiveServer, *, name: str, rows: list[Row], parent: str | None
) -> dict[str, Any]:
    """A default-hyperparameter classification LoRA, on `parent` when given."""
    body: dict[str, Any] = {
        "adapter": name,
        "task": "classification",
        "method": "lora",
        "examples": rows,
    }
    if parent is not None:
        body["base_adapter"] = parent
    response = server.http.post("/v1/training-jobs", json=body)
    response.raise_for_status()
    job = wait(server, response.json()["id"], timeout=3600)
    if job["status"] != "succeeded":
        raise RuntimeError(f"{name}: {json.dumps(job.get('error'))[:300]}")
    return job


def accuracy(server: LiveServer, adapter: str, rows: list[Row]) -> float:
    """Top-1 accuracy of `adapter` on `rows`."""
    outputs = quality_eval.predict(server, adapter, [r["text"] for r in rows])
    tops = [o[0] if isinstance(o, list) else o for o in outputs]
    return sum(str(t["label"]) == r["label"] for t, r in zip(tops, rows, strict=True)) / len(rows)


def effects(
    server: LiveServer, *, corpus: str, parent: str, args: argparse.Namespace
) -> list[Effect]:
    """K-shot LoRAs with and without `parent`, on the same rows and test sample."""
    spec = SETS[corpus]
    train, test = read_split(spec, spec.train), read_split(spec, spec.test)
    held_out = eval_sample(test, args.eval_rows, seed=0)
    out: list[Effect] = []
    for shots in args.shots:
        for seed in range(args.seeds):
            rows = Size(per_class=shots).sample(train, seed)
            tag = f"{corpus}-{shots}-{seed}"
            stacked = task_job(server, name=f"{tag}-on-lm", rows=rows, parent=parent)
            plain = task_job(server, name=f"{tag}-plain", rows=rows, parent=None)
            effect = Effect(
                corpus=corpus,
                shots=shots,
                seed=seed,
                with_domain=round(accuracy(server, stacked["result"]["adapter"], held_out), 4),
                without_domain=round(accuracy(server, plain["result"]["adapter"], held_out), 4),
                job_effect=stacked.get("domain_effect"),
            )
            print(json.dumps(asdict(effect)), flush=True)
            out.append(effect)
    return out


def unlabeled(corpus: str, limit: int) -> list[str]:
    """The training split's texts, labels dropped, at most `limit`."""
    spec = SETS[corpus]
    return [r["text"] for r in read_split(spec, spec.train)][:limit]


def run_encoder(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    server = start_server(work / "encoder-store")
    records: list[dict[str, Any]] = []
    try:
        for corpus in args.sets:
            texts = unlabeled(corpus, args.documents)
            parent, record = adapt(
                server, base="minilm", corpus=corpus, texts=texts, steps=args.mlm_steps, work=work
            )
            print(json.dumps(asdict(record)), flush=True)
            records.append({"kind": "adaptation", **asdict(record)})
            found = effects(server, corpus=corpus, parent=parent, args=args)
            records.extend({"kind": "effect", **asdict(e)} for e in found)
    finally:
        stop_server(server)
    return records


def run_decoder(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    server = start_server(work / "decoder-store", env={"SWITCHYARD_BASE_MODEL": "smollm2"})
    try:
        texts = unlabeled(args.decoder_set, args.documents)
        _, record = adapt(
            server,
            base="smollm2",
            corpus=args.decoder_set,
            texts=texts,
            steps=args.clm_steps,
            work=work,
        )
    finally:
        stop_server(server)
    print(json.dumps(asdict(record)), flush=True)
    return [{"kind": "adaptation", **asdict(record)}]


def report(records: list[dict[str, Any]]) -> None:
    """Markdown tables of the adaptations and the effects."""
    print(
        "\n| base | corpus | docs | s | peak RSS MiB | tokens/s | loss before → after | "
        "perplexity before → after |\n" + "| --- " * 8 + "|"
    )
    for r in (r for r in records if r["kind"] == "adaptation"):
        b, a = r["before"], r["after"]
        print(
            f"| {r['base']} | {r['corpus']} | {r['documents']} | {r['seconds']} | "
            f"{r['peak_rss_mib']} | {r['tokens_per_second']} | "
            f"{b.get('loss', float('nan')):.3f} → {a.get('loss', float('nan')):.3f} | "
            f"{b.get('perplexity', float('nan')):.1f} → {a.get('perplexity', float('nan')):.1f} |"
        )
    print(
        "\n| set | K/class | seed | test acc with LM adapter | without | delta | job's "
        "domain_effect (validation) |\n" + "| --- " * 7 + "|"
    )
    for r in (r for r in records if r["kind"] == "effect"):
        delta = r["with_domain"] - r["without_domain"]
        job = r["job_effect"] or {}
        print(
            f"| {r['corpus']} | {r['shots']} | {r['seed']} | {r['with_domain']:.3f} | "
            f"{r['without_domain']:.3f} | {delta:+.3f} | "
            f"{job.get('with')} vs {job.get('without')} ({job.get('metric')}) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=lambda s: s.split(","), default=["sms_spam", "trec"])
    parser.add_argument("--shots", type=lambda s: [int(k) for k in s.split(",")], default=[8, 32])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--documents", type=int, default=4000, help="unlabeled texts per corpus")
    parser.add_argument("--mlm-steps", type=int, default=250)
    parser.add_argument("--clm-steps", type=int, default=120)
    parser.add_argument("--decoder-set", default="sms_spam")
    parser.add_argument("--eval-rows", type=int, default=500)
    parser.add_argument("--skip", choices=["encoder", "decoder"], default=None)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    work = tempdir()
    records: list[dict[str, Any]] = []
    if args.skip != "decoder":
        records += run_decoder(args, work)
    if args.skip != "encoder":
        records += run_encoder(args, work)
    with open(args.out, "a") as sink:
        for record in records:
            sink.write(json.dumps(record) + "\n")
    report(records)


if __name__ == "__main__":
    main()
