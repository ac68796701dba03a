"""Our training jobs, their events and evaluations in OpenAI's fine-tuning shapes."""

from __future__ import annotations

import time
from typing import Any

from app.api.openai_schemas import (
    FineTuningCheckpoint,
    FineTuningError,
    FineTuningEvent,
    FineTuningExtension,
    FineTuningHyperparameters,
    FineTuningJob,
    FineTuningMethod,
    unix_seconds,
)
from app.runtime.admission import BASE_LABEL
from app.training.hyperparameters import default_learning_rate

# Our job statuses in OpenAI's words; the rest are the same word.
_STATUS = {"validating": "validating_files"}
# OpenAI's names for the metrics a generation job evaluates, next to ours.
_CHECKPOINT_NAMES = {"loss": "valid_loss", "token_accuracy": "valid_mean_token_accuracy"}


def job_view(job: dict[str, Any]) -> FineTuningJob:
    """A training job (its API JSON) as a `fine_tuning.job`."""
    hp = job.get("hyperparameters") or {}
    result = job.get("result") or {}
    hyperparameters = _hyperparameters(hp, job["method"])
    error = job.get("error")
    return FineTuningJob(
        id=job["id"],
        created_at=unix_seconds(job["created_at"]) or 0,
        finished_at=unix_seconds(job.get("finished_at")),
        estimated_finish=_estimated_finish(job),
        error=FineTuningError(**error) if error else None,
        fine_tuned_model=result.get("adapter") if job["status"] == "succeeded" else None,
        hyperparameters=hyperparameters,
        method=FineTuningMethod(
            supervised={"hyperparameters": hyperparameters.model_dump()},
        ),
        model=BASE_LABEL,
        seed=int(hp.get("seed") or 0),
        status=_STATUS.get(job["status"], job["status"]),
        training_file=job.get("training_data"),
        validation_file=job.get("validation_data"),
        switchyard=FineTuningExtension(
            adapter=job["adapter"],
            task=job.get("task"),
            method=job["method"],
            status=job["status"],
            progress=job.get("progress") or {},
            metrics=job.get("metrics") or [],
            best=job.get("best"),
            result=job.get("result"),
        ),
    )


def event_view(event: dict[str, Any]) -> FineTuningEvent:
    """One event of a job's log as a `fine_tuning.job.event` with a readable message."""
    kind, data = event["kind"], event.get("data") or {}
    level = "info"
    if kind == "status":
        status = str(data.get("status"))
        message = f"Job {_STATUS.get(status, status)}"
        error = data.get("error")
        if error:
            level, message = "error", f"{message}: {error.get('message')}"
    elif kind in ("loss", "evaluation"):
        values = ", ".join(f"{k}={_show(v)}" for k, v in data.items() if k not in ("step",))
        what = "training" if kind == "loss" else "evaluation"
        message = f"Step {data.get('step')}: {what} {values}"
    else:
        message = str(data.get("message") or kind)
    return FineTuningEvent(
        id=str(event["id"]),
        created_at=unix_seconds(event.get("created_at")) or 0,
        level=level,
        message=message,
        type="metrics" if kind in ("loss", "evaluation") else "message",
        data={"kind": kind, **data},
    )


def checkpoint_view(job: dict[str, Any], event: dict[str, Any]) -> FineTuningCheckpoint:
    """One evaluation of a job; the best one of a succeeded job is its registered adapter."""
    data = event.get("data") or {}
    step = int(data.get("step") or 0)
    metrics: dict[str, float | None] = {"step": float(step)}
    for key, value in data.items():
        if key != "step" and (value is None or isinstance(value, int | float)):
            metrics[key] = value
            if key in _CHECKPOINT_NAMES:
                metrics[_CHECKPOINT_NAMES[key]] = value
    best = (job.get("best") or {}).get("step") == step and job["status"] == "succeeded"
    result = job.get("result") or {}
    name = str(result.get("adapter")) if best else f"{job['adapter']}:step-{step}"
    return FineTuningCheckpoint(
        id=f"ftckpt-{event['id']}",
        created_at=unix_seconds(event.get("created_at")) or 0,
        fine_tuned_model_checkpoint=name,
        fine_tuning_job_id=job["id"],
        step_number=step,
        metrics=metrics,
        best=best,
    )


def _hyperparameters(hp: dict[str, Any], method: str) -> FineTuningHyperparameters:
    rate = hp.get("learning_rate")
    return FineTuningHyperparameters(
        n_epochs=hp.get("epochs") or "auto",
        batch_size=hp.get("batch_size") or "auto",
        learning_rate_multiplier=(
            round(float(rate) / default_learning_rate(method), 6) if rate else "auto"
        ),
    )


def _estimated_finish(job: dict[str, Any]) -> int | None:
    eta = (job.get("progress") or {}).get("eta_seconds")
    if job["status"] != "running" or eta is None:
        return None
    return int(time.time() + float(eta))


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
