"""bench/fewshot.py's tables: accuracy mean ± std over seeds per set x size and column, the
deltas issue 18's targets name, and the bench/README.md section between its markers."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import write_section
from bench.fewshot_data import SETS

README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- bench/fewshot.py: begin -->", "<!-- bench/fewshot.py: end -->"
COLUMNS = ("logreg", "setfit", "linear_probe", "lora", "contrastive", "auto")
Record = dict[str, Any]
Key = tuple[str, str]  # (set, size label)


def load(path: Path) -> list[Record]:
    """Saved results; a later line for the same (set, size, seed, column) replaces earlier."""
    latest: dict[tuple[Any, ...], Record] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.strip():
            r = json.loads(line)
            latest[(r["set"], r["size"], r["seed"], r["column"])] = r
    return list(latest.values())


def _cells(records: list[Record]) -> tuple[list[Key], dict[Key, dict[str, list[Record]]]]:
    """Rows (set order of SETS, sizes smallest first) and each row's records by column."""
    cells: dict[Key, dict[str, list[Record]]] = {}
    order: dict[Key, tuple[int, list[int]]] = {}
    for r in records:
        key = (r["set"], r["size"])
        cells.setdefault(key, {}).setdefault(r["column"], []).append(r)
        order[key] = (list(SETS).index(r["set"]), r["order"])
    return sorted(cells, key=lambda k: order[k]), cells


def mean_acc(records: list[Record]) -> float | None:
    values = [r["accuracy"] for r in records if r["status"] == "ok"]
    return statistics.fmean(values) if values else None


def _cell(records: list[Record]) -> str:
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return records[0]["status"] if records else ""
    acc = [100 * r["accuracy"] for r in ok]
    spread = f" ± {statistics.stdev(acc):.1f}" if len(acc) > 1 else ""
    seconds = statistics.fmean(r["train_seconds"] for r in ok)
    missing = f" ({len(ok)}/{len(records)} ok)" if len(ok) < len(records) else ""
    shown = f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"
    return f"{statistics.fmean(acc):.1f}{spread} · {shown} s{missing}"


def table(records: list[Record]) -> str:
    """Markdown: accuracy mean ± std over seeds (points) · mean train seconds."""
    rows, cells = _cells(records)
    columns = [c for c in COLUMNS if any(c in cells[k] for k in rows)]
    lines = [
        "| set | size | train rows | seeds | " + " | ".join(columns) + " |",
        "| --- | --- | ---: | ---: |" + " ---: |" * len(columns),
    ]
    for key in rows:
        by_column = cells[key]
        some = next(iter(by_column.values()))
        seeds = len({r["seed"] for rs in by_column.values() for r in rs})
        rows_n = statistics.fmean(r["rows"] for r in some)
        head = f"| {SETS[key[0]].name} | {key[1]} | {rows_n:.0f} | {seeds} |"
        lines.append(head + "".join(f" {_cell(by_column.get(c, []))} |" for c in columns))
    return "\n".join(lines)


def _delta(column: dict[str, list[Record]], a: str, others: tuple[str, ...], floor: float) -> str:
    mine = mean_acc(column.get(a, []))
    theirs = [m for m in (mean_acc(column.get(o, [])) for o in others) if m is not None]
    if mine is None or not theirs:
        return "-"
    delta = 100 * (mine - max(theirs))
    return f"{delta:+.1f} {'ok' if delta >= floor else 'MISS'}"


def _every_size(size: str) -> bool:
    return True


def _eight_per_class(size: str) -> bool:
    return size == "8/class"


TARGETS: tuple[tuple[str, str, tuple[str, ...], float, Callable[[str], bool]], ...] = (
    (
        "auto - max(logreg, linear_probe) >= -0.5",
        "auto",
        ("logreg", "linear_probe"),
        -0.5,
        _every_size,
    ),
    ("auto - setfit >= -1", "auto", ("setfit",), -1.0, _every_size),
    ("lora - linear_probe >= -1", "lora", ("linear_probe",), -1.0, _every_size),
    ("contrastive - setfit >= 0 (8/class)", "contrastive", ("setfit",), 0.0, _eight_per_class),
)


def deltas(records: list[Record]) -> str:
    """Markdown: the targets' deltas in points (means over seeds), ok or MISS each."""
    rows, cells = _cells(records)
    lines = [
        "| set | size | " + " | ".join(t[0] for t in TARGETS) + " |",
        "| --- | --- |" + " ---: |" * len(TARGETS),
    ]
    for key in rows:
        parts = [
            _delta(cells[key], a, others, floor) if applies(key[1]) else ""
            for _, a, others, floor, applies in TARGETS
        ]
        lines.append(f"| {SETS[key[0]].name} | {key[1]} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def summary(records: list[Record]) -> list[str]:
    """The counted targets: contrastive vs setfit at 8/class (accuracy on 4 of 6 sets, and
    train time)."""
    rows, cells = _cells(records)
    wins, faster, compared = 0, 0, 0
    for key in rows:
        c, s = cells[key].get("contrastive", []), cells[key].get("setfit", [])
        mc, ms = mean_acc(c), mean_acc(s)
        if key[1] != "8/class" or mc is None or ms is None:
            continue
        compared += 1
        wins += mc >= ms
        seconds = [
            statistics.fmean(r["train_seconds"] for r in x if r["status"] == "ok") for x in (c, s)
        ]
        faster += seconds[0] <= seconds[1]
    if not compared:
        return ["contrastive vs setfit at 8/class: no set has both columns."]
    return [
        f"contrastive >= setfit at 8/class on {wins} of {compared} sets (target: 4 of 6).",
        f"contrastive trains in <= setfit's time at 8/class on {faster} of {compared} sets.",
    ]


def section(records: list[Record], notes: list[str]) -> str:
    """bench/README.md's section: the commands, the machine, both tables, the notes."""
    commands = list(dict.fromkeys(r["command"] for r in records if r.get("command")))
    versions: dict[str, str] = next(
        (r["extra"]["versions"] for r in records if "versions" in r["extra"]), {}
    )
    dates = sorted({r["date"][:10] for r in records if r.get("date")})
    return "\n".join(
        [
            "## bench/fewshot.py: few-shot quality, 8 to 128 rows per class (issue 18)",
            "",
            f"Run {', '.join(dates) or time.strftime('%Y-%m-%d')} on {platform.machine()} "
            f"({os.cpu_count()} CPUs), packaged all-MiniLM-L6-v2; setfit run: "
            + (", ".join(f"{k} {v}" for k, v in versions.items()) or "none"),
            "",
            "```",
            *commands,
            "```",
            "",
            "Accuracy on the held-out split, points, mean ± std over seeds · mean train s:",
            "",
            table(records),
            "",
            "Targets (differences of the means, points):",
            "",
            deltas(records),
            "",
            *[f"- {line}" for line in [*summary(records), *notes]],
        ]
    )


def write_readme(text: str) -> None:
    """Replace this benchmark's section of bench/README.md (between its markers), or append."""
    write_section(README, BEGIN, END, text)
