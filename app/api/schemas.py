"""Request bodies of the training and dataset routes (API.md, "Training jobs")."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TrainingJobRequest(BaseModel):
    """POST /v1/training-jobs. Shapes only: the job manager checks names, data and labels,
    the trainer checks hyperparameters, so that their messages name the offending value."""

    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(description="adapter name; a finished job adds its next version")
    task: str | None = Field(None, description="the task; the training data's task when omitted")
    method: str = Field(
        "auto",
        description="auto (measure the candidates and keep the best), lora, prefix, prompt, "
        "ia3, linear_probe or contrastive",
    )
    training_data: str | None = Field(None, description="a dataset id (or give `examples`)")
    validation_data: str | None = Field(None, description="a dataset id; else a split is held out")
    examples: list[dict[str, Any]] | None = Field(None, description="inline training rows")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    base_adapter: str | None = Field(
        None, description="a stored LoRA (a domain adapter) to train a task LoRA on top of"
    )
    base_adapter_version: int | None = Field(
        None, description="its version; the latest at submission when omitted"
    )
