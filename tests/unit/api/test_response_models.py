"""Every JSON route declares its response model, so `/openapi.json` says what each one returns.

The routes return plain dicts that FastAPI validates through those models, and a model that
described a body loosely would change it (drop a key, add a null, write 3 as 3.0): the body
tests here check that the models give back exactly what they were given.
"""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Iterator
from typing import Any, Union, get_args, get_origin

import pytest
from fastapi import FastAPI
from fastapi.datastructures import DefaultPlaceholder
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel

from app.api import responses
from app.api.responses import AdapterVersion, StoredVersion, TrainingJobOut
from app.base import FrozenBase
from app.config import Settings
from app.main import create_app
from app.training.job_records import STATUSES, initial_progress


@pytest.fixture
def app(settings: Settings, tiny_base: FrozenBase) -> FastAPI:
    return create_app(settings, base=tiny_base)


def _routes(app: FastAPI) -> Iterator[APIRoute]:
    pending = list(app.router.routes)
    while pending:
        route = pending.pop()
        nested = getattr(route, "original_router", None)  # an included router, if kept
        if nested is not None:
            pending.extend(nested.routes)
        elif isinstance(route, APIRoute) and route.include_in_schema:
            yield route


def _is_json(route: APIRoute) -> bool:
    response_class = route.response_class
    if isinstance(response_class, DefaultPlaceholder):
        response_class = response_class.value
    return inspect.isclass(response_class) and issubclass(response_class, JSONResponse)


def test_every_json_route_declares_a_pydantic_response_model(app: FastAPI) -> None:
    routes = list(_routes(app))
    assert len(routes) > 30  # the walk found the app's routes, not an empty list
    missing = [
        f"{sorted(route.methods or ())} {route.path}"
        for route in routes
        if _is_json(route)
        and not (
            inspect.isclass(route.response_model) and issubclass(route.response_model, BaseModel)
        )
    ]
    assert missing == []


def test_openapi_describes_every_success_response(app: FastAPI) -> None:
    spec = app.openapi()
    empty = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            successes = {code: r for code, r in operation["responses"].items() if code[0] == "2"}
            assert successes, f"{method} {path} documents no 2xx response"
            for code, response in successes.items():
                content = response.get("content") or {}
                if not content or any(not media.get("schema") for media in content.values()):
                    empty.append(f"{method.upper()} {path} {code}")
    assert empty == []
    # The native JSON answers point at named models, not at an anonymous object.
    job = spec["paths"]["/v1/training-jobs/{job_id}"]["get"]["responses"]["200"]
    assert job["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TrainingJobOut"
    }
    schemas = spec["components"]["schemas"]
    assert {"selection", "candidates", "progress", "best"} <= set(
        schemas["TrainingJobOut"]["properties"]
    )


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models inside a field's annotation (lists, dicts, unions)."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        yield annotation
    elif get_origin(annotation) in (list, dict, Union, types.UnionType):
        for arg in get_args(annotation):
            yield from _models(arg)


def _has_optional_field(model: type[BaseModel], seen: set[type[BaseModel]]) -> bool:
    if model in seen:
        return False
    seen.add(model)
    for field in model.model_fields.values():
        if not field.is_required():
            return True
        if any(_has_optional_field(inner, seen) for inner in _models(field.annotation)):
            return True
    return False


def test_routes_of_models_with_optional_keys_leave_missing_keys_out(app: FastAPI) -> None:
    """An optional field of app.api.responses documents a key only some records have; served
    without `response_model_exclude_unset`, its default would be written where the key was
    missing."""
    wrong = []
    for route in _routes(app):
        model = route.response_model
        if not (inspect.isclass(model) and issubclass(model, BaseModel)):
            continue
        ours = model.__module__ == responses.__name__
        if ours and _has_optional_field(model, set()) and not route.response_model_exclude_unset:
            wrong.append(f"{sorted(route.methods or ())} {route.path}")
    assert wrong == []


def test_job_statuses_are_the_job_records_statuses() -> None:
    assert get_args(responses.JobStatus) == STATUSES


def _through(model: type[BaseModel], body: dict[str, Any]) -> str:
    """The body as FastAPI writes it through `model` with `response_model_exclude_unset`."""
    return model.model_validate(body).model_dump_json(exclude_unset=True)


def _job(**fields: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": "job_1",
        "object": "training_job",
        "adapter": "sst",
        "task": "classification",
        "method": "auto",
        "status": "queued",
        "training_data": None,
        "validation_data": None,
        "labels": ["neg", "pos"],
        "rows": {"train": 22, "validation": 2, "validation_source": "held_out"},
        "progress": initial_progress(),
        "metrics": [],
        "best": None,
        "selection": None,
        "candidates": None,
        "result": None,
        "error": None,
        "hyperparameters": {"epochs": 1},
        "created_at": "2026-01-01T00:00:00Z",
        "started_at": None,
        "finished_at": None,
    }
    return {**job, **fields}


@pytest.mark.parametrize(
    "job",
    [
        _job(),
        _job(
            status="succeeded",
            progress={**initial_progress(), "step": 12, "epoch": 1, "stopped_early": False},
            metrics=[{"step": 1, "layers": [-1], "C": 0.003, "accuracy": 1.0}],
            # keys the model does not declare stay where the run wrote them
            best={
                "step": 1,
                "metric": "accuracy",
                "value": 1,
                "layers": [-1],
                "criterion": "2-fold",
                "metrics": {"accuracy": 1.0},
                "selection": {},
            },
            selection={"rule": "fixed", "folds": None, "planned_steps": 3, "new_key": [1]},
            candidates=[{"method": "lora", "value": None, "seconds": 1.0, "chosen": True}],
            result={"adapter": "sst", "version": 3, "candidates": []},
            finished_at="2026-01-01T00:01:00Z",
        ),
        _job(status="failed", error={"code": "out_of_memory", "message": "m", "param": None}),
        _job(a_later_field={"x": 1}),
    ],
)
def test_a_job_passes_through_its_model_unchanged(job: dict[str, Any]) -> None:
    assert _through(TrainingJobOut, job) == json.dumps(job, separators=(",", ":"))


def test_adapter_metadata_passes_through_its_model_unchanged() -> None:
    version = {
        "base_fingerprint": "sha256:0",
        "base_model": "tiny",
        "created_at": "2026-01-01T00:00:00Z",
        "description": {"free": "form"},
        "labels": ["neg", "pos"],
        "lineage": {"source": "upload"},
        "method": "lora",
        "metrics": "whatever the uploader wrote",
        "name": "sst",
        "rank": 4,
        "task": "classification",
        "version": 1,
    }
    assert json.loads(_through(AdapterVersion, version)) == version
    stored = {**version, "size_bytes": 10}
    assert json.loads(_through(StoredVersion, stored)) == stored
