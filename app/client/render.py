"""Human output of the client's models with rich: tables for the CLI, and a live progress
display of a followed training job (step, ETA, loss, latest metric)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from app.client._sync import Client
from app.client.models import (
    Adapter,
    AdapterDetails,
    Dataset,
    Embeddings,
    EvaluationEvent,
    InfoEvent,
    JobEvent,
    LossEvent,
    Prediction,
    StatusEvent,
    TrainingJob,
)

# The job is asked for its progress (total steps, the server's ETA) at most this often.
_REFRESH_S = 1.0


def as_json(value: BaseModel | Sequence[BaseModel] | Any) -> str:
    """A model, a list of models, or plain data as indented JSON."""
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, list | tuple):
        data = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    else:
        data = value
    return json.dumps(data, indent=2, ensure_ascii=False)


def human_bytes(size: int | None) -> str:
    """1536 -> '1.5 KiB'."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _short(items: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", +{len(items) - limit}" if len(items) > limit else "") if items else "-"


def adapters_table(adapters: Sequence[Adapter]) -> Table:
    """`switchyard adapters ls`."""
    table = Table("name", "version", "method", "task", "labels", "size", "resident", "pinned")
    for a in adapters:
        table.add_row(
            a.name,
            str(a.latest_version),
            a.method or "-",
            a.task or "-",
            _short(a.labels),
            human_bytes(a.size_bytes),
            a.resident or "-",
            "yes" if a.pinned else "",
        )
    return table


def adapter_table(details: AdapterDetails) -> Table:
    """`switchyard adapters show NAME`: one row per version."""
    table = Table("version", "method", "rank", "task", "size", "created", "source", "metrics")
    table.title = f"{details.name} (latest v{details.latest_version}, {details.resident or '-'})"
    for v in details.versions:
        source = str(v.lineage.get("source", "-"))
        if v.lineage.get("job_id"):
            source += f" {v.lineage['job_id']}"
        table.add_row(
            str(v.version),
            v.method or "-",
            str(v.rank) if v.rank is not None else "-",
            v.task or "-",
            human_bytes(v.size_bytes),
            v.created_at or "-",
            source,
            _metrics(v.metrics),
        )
    return table


def _metrics(metrics: dict[str, Any]) -> str:
    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    return " ".join(f"{k}={v:.4g}" for k, v in list(numbers.items())[:4]) or "-"


def datasets_table(datasets: Sequence[Dataset]) -> Table:
    """`switchyard datasets ls`."""
    table = Table("id", "name", "task", "rows", "labels", "size", "created")
    for d in datasets:
        labels = sorted(d.label_counts or {})
        table.add_row(
            d.id,
            d.name or "-",
            d.task or "-",
            str(d.rows),
            _short(labels),
            human_bytes(d.bytes),
            d.created_at or "-",
        )
    return table


def jobs_table(jobs: Sequence[TrainingJob]) -> Table:
    """`switchyard jobs ls`."""
    table = Table("id", "adapter", "method", "task", "status", "progress", "result", "created")
    for j in jobs:
        result = f"v{j.result.version}" if j.result else (j.error.code if j.error else "-")
        table.add_row(
            j.id,
            j.adapter,
            j.method or "-",
            j.task or "-",
            j.status,
            f"{j.progress.percent or 0:.0f}%",
            result,
            j.created_at or "-",
        )
    return table


def job_table(job: TrainingJob) -> Table:
    """`switchyard jobs show ID`: the job's fields, one a row."""
    table = Table("field", "value", show_header=False)
    p = job.progress
    rows = {
        "id": job.id,
        "adapter": job.adapter,
        "status": job.status,
        "method / task": f"{job.method} / {job.task}",
        "data": f"{job.training_data or 'inline examples'} (validation: "
        f"{job.validation_data or job.rows.get('validation_source') or '-'})",
        "progress": f"step {p.step}/{p.total_steps or '?'}, {p.percent or 0:.0f}%",
        "evaluations": str(len(job.metrics)),
        "best": _metrics(dict(job.best.get("metrics") or {})) if job.best else "-",
        "result": f"{job.result.adapter} v{job.result.version}" if job.result else "-",
        "error": f"{job.error.message} ({job.error.code})" if job.error else "-",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    return table


def _all_have(output: Any, key: str) -> bool:
    return isinstance(output, list) and all(isinstance(o, dict) and key in o for o in output)


def _output_text(output: Any) -> str:
    if output and _all_have(output, "label"):
        return ", ".join(f"{o['label']} {float(o.get('score', 0)):.3f}" for o in output)
    if _all_have(output, "entity_group"):
        return ", ".join(f"{o.get('word')}:{o['entity_group']}" for o in output) or "-"
    if isinstance(output, dict) and "generated_text" in output:
        return str(output["generated_text"])
    if isinstance(output, dict) and "score" in output:
        return f"{float(output['score']):.4f}"
    return json.dumps(output, ensure_ascii=False)


def prediction_table(inputs: Sequence[str], prediction: Prediction) -> Table:
    """`switchyard predict NAME TEXT...`: each input with its output."""
    table = Table("input", "output", title=f"{prediction.adapter} v{prediction.version}")
    for text, output in zip(inputs, prediction.outputs, strict=False):
        table.add_row(text, _output_text(output))
    return table


def embeddings_table(inputs: Sequence[str], result: Embeddings) -> Table:
    """`switchyard embed TEXT...`: dimensions, norm and the first values of each vector."""
    table = Table("input", "dims", "norm", "first values", title=result.model or "")
    for text, item in zip(inputs, result.data, strict=False):
        vector = item.embedding if isinstance(item.embedding, list) else []
        norm = math.sqrt(sum(x * x for x in vector))
        head = ", ".join(f"{x:.3f}" for x in vector[:4])
        table.add_row(text, str(len(vector)), f"{norm:.3f}", head + (", ..." if vector else ""))
    return table


class JobProgress:
    """A rich progress bar fed by a job's events; prints evaluations and messages above it."""

    def __init__(self, client: Client, job: TrainingJob, console: Console) -> None:
        self.client, self.job, self.console = client, job, console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[metric]}"),
            console=console,
        )
        self.task: TaskID = self.progress.add_task(
            f"{job.adapter} ({job.method})", total=None, eta="-", loss="-", metric=""
        )
        self._asked = 0.0

    def __enter__(self) -> JobProgress:
        self.progress.start()
        self._refresh(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, event: JobEvent) -> None:
        """Show one event."""
        if isinstance(event, LossEvent):
            loss = f"{event.loss:.4f}" if event.loss is not None else "nan"
            self.progress.update(self.task, completed=event.step or 0, loss=loss)
        elif isinstance(event, EvaluationEvent):
            shown = " ".join(f"{k} {v:.4f}" for k, v in list(event.metrics.items())[:2])
            self.progress.update(self.task, metric=shown)
            self.console.print(f"step {event.step}: {shown or 'evaluated'}")
        elif isinstance(event, InfoEvent):
            self.console.print(event.message)
        elif isinstance(event, StatusEvent):
            self.console.print(f"status: {event.status}")
        self._refresh(force=isinstance(event, StatusEvent))

    def _refresh(self, *, force: bool) -> None:
        if not force and time.monotonic() - self._asked < _REFRESH_S:
            return
        self._asked = time.monotonic()
        self.job = self.client.get_job(self.job.id)
        p = self.job.progress
        eta = f"{p.eta_seconds:.0f}s" if p.eta_seconds is not None else "-"
        done = max(p.step or 0, int(self.progress.tasks[0].completed))
        self.progress.update(self.task, total=p.total_steps, completed=done, eta=eta)
