"""Quality of trained adapters on held-out public data, against full fine-tuning, same run.

Each (dataset, method) trains through the HTTP API of a spawned `switchyard serve` (packaged
MiniLM, temporary store): the rows are uploaded as a dataset, a job is submitted with the
service's defaults (no hyperparameters unless `--epochs`), and the registered adapter is
evaluated on the dataset's held-out split through `/predict`. The reference is a plain
transformers fine-tune of the whole base (`bench/full_ft.py`) on the very same training and
validation rows, run in this process while the server is idle. Rows come from
../shared/datasets: SST-2 (dev), TREC coarse labels (test), CoNLL-2003 (test), STS-B (test),
RTE (dev).

    python -m bench.quality --sst2-rows 2000 --trec-rows 5452 --conll-rows 2000 \\
        --stsb-rows 2000 --rte-rows 2490 --write-readme
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import quality_eval
from bench._common import tempdir, write_section
from bench.full_ft import full_finetune
from tests.integration.conftest import LiveServer, start_server, stop_server

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- bench/quality.py: begin -->", "<!-- bench/quality.py: end -->"


@dataclass(frozen=True)
class Spec:
    """One dataset: where its rows are, its task, the held-out split and the metric."""

    name: str
    folder: str
    train: str
    test: str
    task: str
    metric: str


SPECS = {
    "sst2": Spec("SST-2", "sst2", "train", "dev", "classification", "accuracy"),
    "trec": Spec("TREC-6", "trec", "train", "test", "classification", "accuracy"),
    "conll": Spec("CoNLL-2003", "conll2003", "train", "test", "token_classification", "entity_f1"),
    "stsb": Spec("STS-B", "stsb", "train", "test", "regression", "pearson"),
    "rte": Spec("RTE", "rte", "train", "dev", "classification", "accuracy"),
}


@dataclass
class Result:
    """One trained model's score and cost."""

    dataset: str
    method: str
    rows: int
    test_rows: int
    metric: str
    score: float | None
    seconds: float
    epochs: float
    status: str = "succeeded"
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Optimizer steps and evaluations only, from the job's event times (no probe, no set-up).
    train_per_epoch: float | None = None
    command: str | None = None  # the bench command line that produced this result

    @property
    def per_epoch(self) -> float | None:
        """Job seconds per epoch run, set-up and probe included."""
        return self.seconds / self.epochs if self.epochs else None


def read_rows(spec: Spec, split: str, limit: int | None) -> list[dict[str, Any]]:
    """The first `limit` rows of a split, in the training API's row format."""
    lines = (DATASETS / spec.folder / f"{split}.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines[:limit] if line.strip()]
    for row in rows:
        row.pop("fine_label", None)  # TREC: the coarse label is the task
    return rows


def train_via_api(
    server: LiveServer,
    spec: Spec,
    method: str,
    dataset_id: str,
    hyperparameters: dict[str, Any],
    timeout: float,
) -> dict[str, Any]:
    """Submit a job and wait for it to end; returns the job's JSON."""
    name = f"{spec.folder}-{method}".replace("_", "-")
    response = server.http.post(
        "/v1/training-jobs",
        json={
            "adapter": name,
            "task": spec.task,
            "method": method,
            "training_data": dataset_id,
            "hyperparameters": hyperparameters,
        },
    )
    if response.status_code != 202:
        return {"status": "rejected", "error": response.json().get("error"), "adapter": name}
    job_id = response.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = server.http.get(f"/v1/training-jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return dict(job)
        time.sleep(2)
    server.http.post(f"/v1/training-jobs/{job_id}/cancel")
    return {"status": "timed_out", "error": {"message": f"over {timeout} s"}, "adapter": name}


def run_service(
    server: LiveServer,
    spec: Spec,
    method: str,
    dataset_id: str,
    rows: int,
    test: list[dict[str, Any]],
    args: argparse.Namespace,
) -> Result:
    """Train one method through the API with the service's defaults, score it on `test`."""
    hyperparameters = {"epochs": args.epochs} if args.epochs else {}
    job = train_via_api(server, spec, method, dataset_id, hyperparameters, args.job_timeout)
    if job["status"] != "succeeded":
        return Result(
            spec.name,
            method,
            rows,
            len(test),
            spec.metric,
            None,
            0.0,
            0.0,
            status=job["status"],
            error=json.dumps(job.get("error"))[:300],
        )
    seconds = _job_seconds(job)
    epochs = float(job["progress"]["epoch"] or 0.0) if method != "linear_probe" else 0.0
    score = quality_eval.evaluate_adapter(server, job["result"]["adapter"], spec.task, test)
    extra = {"best": job["best"], "hyperparameters": job["hyperparameters"], "job": job["id"]}
    per_epoch = quality_eval.train_seconds_per_epoch(server, job) if epochs else None
    return Result(
        spec.name,
        method,
        rows,
        len(test),
        spec.metric,
        score[spec.metric],
        seconds,
        epochs,
        extra=extra | {"metrics": score},
        train_per_epoch=per_epoch,
    )


def _job_seconds(job: dict[str, Any]) -> float:
    from datetime import datetime

    started, finished = (datetime.fromisoformat(job[k]) for k in ("started_at", "finished_at"))
    return (finished - started).total_seconds()


def upload(server: LiveServer, work: Path, key: str, rows: list[dict[str, Any]]) -> str:
    """POST the rows as a JSONL dataset; returns its id."""
    path = work / f"{key}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    response = server.http.post(
        "/v1/datasets", files={"file": (path.name, path.read_bytes())}, data={"name": key}
    )
    response.raise_for_status()
    return str(response.json()["id"])


def run_dataset(
    server: LiveServer, key: str, args: argparse.Namespace, work: Path, results: list[Result]
) -> None:
    """Every method on one dataset, then the full fine-tune of the same rows."""
    spec = SPECS[key]
    train = read_rows(spec, spec.train, getattr(args, f"{key}_rows"))
    test = read_rows(spec, spec.test, args.test_rows)
    dataset_id = upload(server, work, key, train)
    for method in args.methods:
        if (
            method == "linear_probe"
            and spec.task == "token_classification"
            and (args.skip_token_probe)
        ):
            continue
        results.append(run_service(server, spec, method, dataset_id, len(train), test, args))
        _report(results[-1], args)
    if args.full_ft:
        outcome = full_finetune(
            spec.task, train, test, epochs=args.ft_epochs, learning_rate=args.ft_lr
        )
        results.append(
            Result(
                spec.name,
                "full fine-tune",
                len(train),
                len(test),
                spec.metric,
                outcome["metrics"][spec.metric],
                outcome["seconds"],
                outcome["epochs"],
                extra=outcome,
                train_per_epoch=outcome["seconds"] / outcome["epochs"],
            )
        )
        _report(results[-1], args)


def _report(result: Result, args: argparse.Namespace) -> None:
    result.command = result.command or quality_eval.command_line()
    print(json.dumps(asdict(result) | {"per_epoch": result.per_epoch}), flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(result)) + "\n")


def table(results: list[Result]) -> str:
    """Markdown: one row per dataset and method."""
    lines = [
        "| dataset | method | train rows | test rows | metric | score | epochs run | "
        "job s | train s/epoch |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        score = f"{r.score:.4f}" if r.score is not None else f"{r.status}: {r.error}"
        per_epoch = f"{r.train_per_epoch:.0f}" if r.train_per_epoch else "-"
        lines.append(
            f"| {r.dataset} | {r.method} | {r.rows} | {r.test_rows} | {r.metric} | "
            f"{score} | {r.epochs:.2f} | {r.seconds:.0f} | {per_epoch} |"
        )
    return "\n".join(lines)


def write_readme(text: str) -> None:
    """Replace this benchmark's section of bench/README.md (between its markers), or append."""
    write_section(README, BEGIN, END, text)


def parse_args() -> argparse.Namespace:
    """Sizes, methods and outputs from the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--methods", nargs="+", default=["lora", "prefix", "linear_probe"])
    for key, default in (
        ("sst2", 2000),
        ("trec", 5452),
        ("conll", 2000),
        ("stsb", 2000),
        ("rte", 2490),
    ):
        parser.add_argument(f"--{key}-rows", type=int, default=default)
    parser.add_argument("--test-rows", type=int, default=None, help="cap on held-out rows")
    parser.add_argument("--epochs", type=int, default=None, help="else the service's default")
    parser.add_argument("--ft-epochs", type=int, default=3)
    parser.add_argument("--ft-lr", type=float, default=5e-5)
    parser.add_argument("--no-full-ft", dest="full_ft", action="store_false")
    parser.add_argument("--skip-token-probe", action="store_true")
    parser.add_argument("--job-timeout", type=float, default=4 * 3600)
    parser.add_argument("--out", default=None, help="append each result as a JSON line")
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument(
        "--from-results",
        default=None,
        help="no training: the table and README section from an --out file",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for the server and the full fine-tune",
    )
    return parser.parse_args()


def main() -> None:
    """Run the benchmark (or only rewrite its table with --from-results)."""
    args = parse_args()
    if args.from_results:
        # Only the table and README section, from the JSON lines of an earlier run.
        lines = Path(args.from_results).read_text().splitlines()
        loaded = [Result(**json.loads(line)) for line in lines if line.strip()]
        print(table(loaded))
        if args.write_readme:
            write_readme(quality_eval.readme_section(table(loaded), args, loaded))
        return
    work = tempdir()
    env = {}
    if args.threads:
        # The server and the in-process full fine-tune get the same number of threads.
        env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        torch.set_num_threads(args.threads)
    server = start_server(work / "store", env=env)
    results: list[Result] = []
    started = time.monotonic()
    try:
        for key in args.datasets:
            run_dataset(server, key, args, work, results)
    finally:
        stop_server(server)
    text = table(results)
    print(text)
    print(f"total {time.monotonic() - started:.0f} s")
    if args.write_readme:
        write_readme(quality_eval.readme_section(text, args, results))


if __name__ == "__main__":
    main()
