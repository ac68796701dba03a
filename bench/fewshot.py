"""Few-shot quality (issue 18): accuracy and train seconds at 8 to 128 rows per class, all on
the packaged all-MiniLM-L6-v2, every column on the very same seeded rows.

Sets (../shared/datasets): SST-2 (dev), TREC coarse and TREC fine (50 labels; test), SMS spam
(test), CR (test), RTE (sentence pairs; dev). Each training split is subsampled, stratified
and seeded, to K rows per class (a label with fewer rows gives all it has; smaller samples nest
in larger ones) and to fixed totals (`--rows`, proportional per label); the held-out split is
capped at `--eval-rows` by a seeded uniform sample, the same rows for every size and column.
Columns:
- logreg: scikit-learn logistic regression on frozen mean-pooled (attention-masked) last-layer
  features of the base, fit here; C by LogisticRegressionCV over 0.01..100 (stratified k-fold,
  k = min(5, rows of the smallest label)), C = 1.0 when a label has one row. Seconds: training
  features plus the fit.
- setfit: the PyPI `setfit` library (extra `fewshot-bench`) on the same folder, 1 epoch,
  num_iterations 20, batch size 16, offline, in a subprocess (bench/setfit_runner.py).
- linear_probe, lora, contrastive, auto: the service's jobs through the HTTP API of a spawned
  server, default hyperparameters (`auto` omits `method`); a method the server rejects is
  n/a. Seconds: submit to succeeded.
Each result is appended to bench/results/fewshot.jsonl as soon as it exists; then a markdown
table (mean ± std over seeds) and the deltas of the issue's targets.

    python3 -m bench.fewshot --rows 1000 --write-readme      # the full grid, 3 seeds
    python3 -m bench.fewshot --sets cr --sizes 8 --seeds 1 --methods logreg,setfit,lora
    python3 -m bench.fewshot --from-jsonl --write-readme     # tables from saved results only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sklearn.metrics import f1_score

from bench import fewshot_columns as columns
from bench import fewshot_report as report
from bench._common import base_dir, tempdir
from bench.fewshot_data import SETS, Row, SetSpec, Size, eval_sample, parse_seeds, parse_sizes
from bench.fewshot_data import read_split as read
from bench.quality_eval import command_line
from tests.integration.conftest import LiveServer, start_server, stop_server

RESULTS = Path(__file__).resolve().parent / "results" / "fewshot.jsonl"
ALL_COLUMNS = ("logreg", "setfit", *columns.SERVICE_METHODS)


class Run:
    """One bench run's state: options, the encoder, the server, where results go."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.folder = base_dir()
        self.work = tempdir()
        self.out = Path(args.out)
        # --resume skips what a stopped run measured (or found n/a), and retries failures.
        saved = report.load(self.out) if args.resume else []
        self.done = {_key(r) for r in saved if r["status"] != "failed"}
        self.encoder = columns.Encoder(self.folder) if "logreg" in args.methods else None
        self.server: LiveServer | None = None
        self.setfit_python = args.setfit_python or sys.executable
        self.no_setfit = None
        if "setfit" in args.methods:
            self.no_setfit = columns.setfit_available(self.setfit_python)
        self.records: list[dict[str, Any]] = []

    def column(
        self,
        name: str,
        spec: SetSpec,
        size: Size,
        seed: int,
        train: list[Row],
        evaluate: list[Row],
        eval_x: Any,
    ) -> columns.Outcome:
        """Train and predict one column on one sample."""
        if name == "logreg":
            assert self.encoder is not None
            return columns.logreg(self.encoder, train, eval_x)
        if name == "setfit":
            if self.no_setfit:
                return columns.Outcome("n/a", error=self.no_setfit)
            return columns.setfit(
                self.setfit_python,
                self.folder,
                train,
                evaluate,
                seed,
                self.work,
                num_epochs=1,
                num_iterations=20,
                batch_size=16,
                max_steps=self.args.setfit_max_steps,
                timeout=self.args.job_timeout,
            )
        if self.server is None:
            env = {"OMP_NUM_THREADS": str(self.args.threads)} if self.args.threads else {}
            log = self.work / "server.log"  # the server's own output
            self.server = start_server(self.work / "store", env=env, output=log)
        size_tag = size.label.replace("/", "per").replace(" ", "")
        adapter = f"{spec.key}-{size_tag}-s{seed}-{name}".replace("_", "-").lower()
        return columns.service(
            self.server, name, adapter, train, evaluate, self.work, self.args.job_timeout
        )

    def close(self) -> None:
        if self.server is not None:
            stop_server(self.server)


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["set"], r["size"], r["seed"], r["column"])


def record(
    spec: SetSpec,
    size: Size,
    seed: int,
    name: str,
    train: list[Row],
    evaluate: list[Row],
    outcome: columns.Outcome,
) -> dict[str, Any]:
    """One JSON line: the sample, the column, its accuracy and macro F1, seconds, status."""
    gold = [r["label"] for r in evaluate]
    accuracy = macro_f1 = None
    if outcome.predictions is not None:
        pairs = list(zip(outcome.predictions, gold, strict=True))
        accuracy = sum(p == g for p, g in pairs) / len(pairs)
        macro_f1 = float(f1_score(gold, outcome.predictions, average="macro"))
    return {
        "set": spec.key, "size": size.label, "order": list(size.order), "rows": len(train),
        "labels": len({r["label"] for r in train}), "seed": seed, "column": name,
        "accuracy": accuracy, "macro_f1": macro_f1, "train_seconds": outcome.seconds,
        "status": outcome.status, "error": outcome.error, "eval_rows": len(evaluate),
        "extra": outcome.extra, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
    }  # fmt: skip


def emit(run: Run, line: dict[str, Any]) -> None:
    """Append the result to the JSONL file now, and say it."""
    run.records.append(line)
    run.out.parent.mkdir(parents=True, exist_ok=True)
    with open(run.out, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")
    acc = f"{line['accuracy']:.4f}" if line["accuracy"] is not None else line["error"]
    seconds = f"{line['train_seconds']:.1f} s" if line["train_seconds"] is not None else "-"
    print(
        f"{line['set']} {line['size']} ({line['rows']} rows) seed {line['seed']} "
        f"{line['column']}: {line['status']} {acc} {seconds}",
        flush=True,
    )


def run_set(run: Run, spec: SetSpec, sizes: list[Size], seeds: list[int]) -> None:
    """Every size, seed and column of one set."""
    pool = read(spec, spec.train)
    evaluate = eval_sample(read(spec, spec.test), run.args.eval_rows, run.args.eval_seed)
    eval_x = run.encoder.encode(evaluate) if run.encoder is not None else None
    for size in sizes:
        for seed in seeds:
            train = size.sample(pool, seed)
            for name in run.args.methods:
                if (spec.key, size.label, seed, name) in run.done:
                    continue
                try:
                    outcome = run.column(name, spec, size, seed, train, evaluate, eval_x)
                except Exception as error:  # one broken column must not end a long run
                    outcome = columns.Outcome("failed", error=repr(error)[:300])
                emit(run, record(spec, size, seed, name, train, evaluate, outcome))


def notes(args: argparse.Namespace) -> list[str]:
    """How the columns were made, for the README section."""
    return [
        f"Held-out rows: at most {args.eval_rows} per set (seeded sample {args.eval_seed}); "
        "training rows stratified and seeded (the seed is the sample's; every column gets "
        "the same rows).",
        "logreg: frozen mean-pooled last-layer features, max 256 tokens; C chosen by "
        "LogisticRegressionCV over {0.01, 0.1, 1, 10, 100}, stratified k-fold with "
        "k = min(5, rows of the smallest label); C = 1 where a label has one row.",
        "setfit: SetFitModel.from_pretrained(the packaged folder), 1 epoch, num_iterations "
        "20, batch size 16, its default logistic-regression head; pairs as "
        "`text [SEP] text_pair`. Seconds: its Trainer.train().",
        "Service columns: default hyperparameters; seconds from submit to succeeded; "
        "n/a = the server rejected the method (auto: or ran a named method when `method` was "
        "omitted, i.e. the server has no auto yet).",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Sets, sizes, seeds, columns and outputs from the command line."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sets", default=",".join(SETS), help=f"of {','.join(SETS)}")
    p.add_argument("--sizes", default="8,16,32,64,128", help="rows per class; '' for none")
    p.add_argument("--rows", default="", help="fixed totals like 1000, or 'all'")
    p.add_argument("--seeds", default="3", help="N: seeds 0..N-1; or a list like 4,7")
    p.add_argument("--methods", default=",".join(ALL_COLUMNS), help="columns to run")
    p.add_argument("--eval-rows", type=int, default=500, help="cap on held-out rows")
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--setfit-python", default=None, help="interpreter with setfit installed")
    p.add_argument("--setfit-max-steps", type=int, default=-1, help="-1: setfit's own")
    p.add_argument("--threads", type=int, default=None, help="OMP threads of the server")
    p.add_argument("--job-timeout", type=float, default=4 * 3600)
    p.add_argument("--out", default=str(RESULTS), help="JSONL file results are appended to")
    p.add_argument("--resume", action="store_true", help="skip results already in --out")
    p.add_argument("--from-jsonl", action="store_true", help="no training: tables from --out")
    p.add_argument("--write-readme", action="store_true")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = set(args.methods) - set(ALL_COLUMNS) | set(args.sets.split(",")) - set(SETS)
    if unknown:
        p.error(f"unknown sets or methods: {sorted(unknown)}")
    return args


def finish(records: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Print both tables; with --write-readme, put them into bench/README.md."""
    print(report.table(records), report.deltas(records), *report.summary(records), sep="\n\n")
    if args.write_readme:
        report.write_readme(report.section(records, notes(args)))


def main(argv: list[str] | None = None) -> None:
    """Run the grid (or, with --from-jsonl, only rebuild the tables)."""
    args = parse_args(argv)
    if args.from_jsonl:
        finish(report.load(Path(args.out)), args)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sizes, seeds = parse_sizes(args.sizes, args.rows), parse_seeds(args.seeds)
    run, started = Run(args), time.monotonic()
    try:
        for key in args.sets.split(","):
            run_set(run, SETS[key], sizes, seeds)
    finally:
        run.close()
    print(f"total {time.monotonic() - started:.0f} s")
    records = run.records
    if args.resume:  # this grid's cells, with the results of the runs it resumed
        cells = {(k, s.label) for k in args.sets.split(",") for s in sizes}
        records = [r for r in report.load(run.out) if (r["set"], r["size"]) in cells]
    finish(records, args)


if __name__ == "__main__":
    main()
