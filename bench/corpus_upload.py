"""Memory and pace of storing an uploaded unlabeled corpus: streamed against read whole.

Writes a text file of `--mb` MiB (one document a line) and a labeled JSONL of the same
documents (`{"text", "label"}`), then stores each with `DatasetService.upload` from the file on
disk (as the route hands it the upload's spooled file), each in a fresh process. The text
file takes the streaming path (issue 17); the labeled one the in-memory path every upload took
before, which is the baseline. RSS is sampled every 5 ms; growth is the peak over the RSS just
before the upload.

    python3 -m bench.corpus_upload --mb 200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
LINE = "the quick brown fox jumps over the lazy dog while the band plays on "


def rss() -> int:
    """Resident bytes of this process."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def write_files(folder: Path, mib: int) -> tuple[Path, Path]:
    """The corpus as plain text and as labeled JSONL, written a line at a time."""
    text, labeled = folder / "corpus.txt", folder / "labeled.jsonl"
    with open(text, "w") as plain, open(labeled, "w") as rows:
        i = 0
        while plain.tell() < mib * MIB:
            doc = f"{i} {LINE * (1 + i % 5)}"
            plain.write(doc + "\n")
            rows.write(json.dumps({"text": doc, "label": "ab"[i % 2]}) + "\n")
            i += 1
    return text, labeled


def one_run(path: Path, store: Path) -> dict[str, Any]:
    """Store one file in this process; the measurements as a dict."""
    from app.config import Settings
    from app.db import open_database
    from app.training.datasets import DatasetService

    size = path.stat().st_size
    settings = Settings(
        store=store,
        max_dataset_bytes=size + 1,
        max_corpus_bytes=size + 1,
        max_training_rows=10**9,  # the baseline's row cap is not what is measured
        _env_file=None,
    )
    service = DatasetService(open_database(settings), settings)
    idle = rss()
    peak = idle
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    with open(path, "rb") as stream:
        created = service.upload(path.name, stream)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return {
        "file": path.name,
        "bytes": size,
        "rows": created["rows"],
        "task": created["task"],
        "seconds": round(seconds, 2),
        "growth_mib": round((peak - idle) / MIB, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=200, help="size of the corpus in MiB")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child run: the file to store
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(Path(args.one), Path(args.store))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = []
        for path in write_files(folder, args.mb):
            command = [sys.executable, "-m", "bench.corpus_upload", "--one", str(path)]
            command += ["--store", str(folder / f"store-{path.stem}")]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            run = json.loads(out.splitlines()[-1])
            results.append(run)
            print(
                f"{run['file']:14} {run['bytes'] / MIB:7.1f} MiB  {run['rows']:8d} rows  "
                f"task {run['task']:18}  {run['seconds']:6.2f} s  "
                f"RSS growth {run['growth_mib']:8.1f} MiB",
                flush=True,
            )
    streamed, whole = results
    print(
        f"RSS growth, streamed / read whole: {streamed['growth_mib'] / whole['growth_mib']:.4f}; "
        f"streamed growth / file size: {streamed['growth_mib'] * MIB / streamed['bytes']:.4f}"
    )


if __name__ == "__main__":
    main()
