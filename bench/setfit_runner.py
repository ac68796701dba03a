"""The PyPI `setfit` library on the packaged MiniLM folder, run by bench/fewshot.py in its own
process (its own seeds, threads and memory; another interpreter with --setfit-python):

    python -m bench.setfit_runner IN.json OUT.json

IN: {"model": folder, "train": rows, "eval": rows, "seed": int, "num_epochs": 1,
"num_iterations": 20, "batch_size": 16, "max_steps": -1}. Rows are the training API's
({"text", "label"}, pairs with "text_pair"); SetFit takes one text, so a pair is joined as
"text [SEP] text_pair" (the tokenizer reads [SEP] as its separator token). OUT:
{"predictions": [label per eval row], "seconds": fit wall time, "pairs": pairs trained on,
"versions": {...}}. Offline: HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")


def joined(row: dict[str, Any]) -> str:
    """SetFit's single text for a row; a pair as `text [SEP] text_pair`."""
    pair = row.get("text_pair")
    return f"{row['text']} [SEP] {pair}" if pair else str(row["text"])


def versions() -> dict[str, str]:
    """Versions of the libraries this run used."""
    from importlib.metadata import version

    names = ("setfit", "sentence-transformers", "transformers", "torch", "scikit-learn")
    return {name: version(name) for name in names}


def train_and_predict(spec: dict[str, Any]) -> dict[str, Any]:
    """Fit SetFit (contrastive body fine-tune, then its logistic-regression head) and
    predict the eval rows."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments
    from transformers import set_seed

    seed = int(spec["seed"])
    set_seed(seed)
    model = SetFitModel.from_pretrained(spec["model"])
    train = Dataset.from_list([{"text": joined(r), "label": r["label"]} for r in spec["train"]])
    with tempfile.TemporaryDirectory(prefix="setfit-") as out:
        args = TrainingArguments(
            output_dir=out,
            batch_size=int(spec.get("batch_size", 16)),
            num_epochs=int(spec.get("num_epochs", 1)),
            num_iterations=int(spec.get("num_iterations", 20)),
            max_steps=int(spec.get("max_steps", -1)),
            seed=seed,
            report_to="none",
            save_strategy="no",
            show_progress_bar=False,
        )
        started = time.perf_counter()
        trainer = Trainer(model=model, args=args, train_dataset=train)
        trainer.train()
        seconds = time.perf_counter() - started
    predictions = model.predict([joined(r) for r in spec["eval"]], batch_size=64)
    return {
        "predictions": [str(p) for p in predictions],
        "seconds": seconds,
        "pairs": int(spec.get("num_iterations", 20)) * 2 * len(spec["train"]),
        "versions": versions(),
    }


def main() -> None:
    """Read IN.json, write OUT.json."""
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    result = train_and_predict(json.loads(source.read_text()))
    target.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
