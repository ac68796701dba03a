"""Property-based API fuzzing with schemathesis against the app's own OpenAPI, on the tiny base.

Every operation gets a bounded number of generated requests (valid and invalid), sent in
process through schemathesis' ASGI transport; each response must be a non-5xx that matches
the documented status codes and schemas. One adapter is stored before start so that some
requests reach a real adapter instead of a 404. Deterministic (derandomized) and bounded:
a few seconds on the tiny base.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, settings
from schemathesis import checks
from schemathesis.python.asgi import shutdown_lifespans
from transformers import BertModel, PreTrainedTokenizerBase

from app.base import wrap_base
from app.config import Settings
from app.main import create_app
from app.registry.catalog import Registry
from app.registry.store import AdapterStore
from tests.conftest import peft_adapter

SEEDED = "seeded"
# What the issue asks of responses is checked (no 5xx, documented status, content type, headers
# and body schema, Allow on 405). Two request-side checks are left out: the service checks
# more than a schema can say (a name must exist, an input must be text), so schema-valid
# requests are rightly refused (positive_data_acceptance), and pydantic's lax mode accepts
# 0 for false (negative_data_rejection); neither is a reliability fault.
EXCLUDED = [checks.positive_data_acceptance, checks.negative_data_rejection]
LABELS = ["neg", "pos"]


@pytest.fixture(scope="module")
def api_schema(
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """The app's OpenAPI, loaded through the ASGI app; the lifespan runs once for the module."""
    work = tmp_path_factory.mktemp("schemathesis")
    base = wrap_base(
        BertModel.from_pretrained(tiny_bert_dir),
        tokenizer,
        name="tiny-bert",
        path=tiny_bert_dir,
        device=torch.device("cpu"),
    )
    app_settings = Settings(
        store=work / "store",
        max_wait_ms=1.0,
        request_timeout_s=10.0,
        _env_file=None,
    )
    files = peft_adapter(tiny_bert_dir, r=4, out=work / "adapter")
    Registry(AdapterStore(app_settings.store), base, app_settings).register(
        SEEDED,
        config_bytes=files["adapter_config.json"],
        weights_bytes=files["adapter_model.safetensors"],
        task="classification",
        labels=LABELS,
    )
    app = create_app(app_settings, base=base)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)

    @schema.hook
    def map_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
        # Two in three named requests go to the stored adapter (never DELETE it: others need it).
        name = (path_parameters or {}).get("name")
        if (
            isinstance(name, str)
            and context.operation.method.upper() != "DELETE"
            and zlib.crc32(name.encode()) % 3 != 0
        ):
            return {**(path_parameters or {}), "name": SEEDED}
        return path_parameters

    yield schema
    shutdown_lifespans()  # stop the batcher and job workers this module's app started


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_openapi(case: Any) -> None:
    """No 5xx; status codes, content types, headers and bodies as the OpenAPI documents them."""
    case.call_and_validate(excluded_checks=EXCLUDED)


# ---------------------------------------------------------------- stateful: links chain calls
STATEFUL_SEEDS = ["one", "two", "three"]


@pytest.fixture(scope="module")
def stateful_schema(
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """Its own app and store: stateful runs delete what they find, the test above needs its own."""
    work = tmp_path_factory.mktemp("schemathesis-stateful")
    base = wrap_base(
        BertModel.from_pretrained(tiny_bert_dir),
        tokenizer,
        name="tiny-bert",
        path=tiny_bert_dir,
        device=torch.device("cpu"),
    )
    app_settings = Settings(
        store=work / "store",
        max_wait_ms=1.0,
        request_timeout_s=10.0,
        _env_file=None,
    )
    files = peft_adapter(tiny_bert_dir, r=4, out=work / "adapter")
    registry = Registry(AdapterStore(app_settings.store), base, app_settings)
    for name in STATEFUL_SEEDS:
        for _ in range(2):
            registry.register(
                name,
                config_bytes=files["adapter_config.json"],
                weights_bytes=files["adapter_model.safetensors"],
                task="classification",
                labels=LABELS,
            )
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(app_settings, base=base))
    shutdown_lifespans()


def test_stateful_runs_over_the_links(stateful_schema: Any) -> None:
    """Chains of calls along the links: no 5xx, every response as documented. Bounded: a few
    scenarios of a few steps each (well under a minute on the tiny base)."""
    machine = stateful_schema.as_state_machine()
    seen: list[tuple[str, int]] = []

    class Workflow(machine):  # type: ignore[misc,valid-type]
        def after_call(self, response: Any, case: Any) -> None:
            seen.append((f"{case.method} {case.path}", response.status_code))

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, excluded_checks=EXCLUDED)

        def teardown(self) -> None:
            # Random bytes are often valid plain text, so uploads now store datasets; each
            # scenario starts from the same catalog, or replays would see other lists.
            datasets = stateful_schema.app.state.datasets
            for dataset in datasets.list():
                datasets.delete(dataset["id"])
            super().teardown()

    # Scenarios are random walks, drawn once (derandomized) from the schema: any change to the
    # schema (its response models, the links schemathesis infers from them) draws other walks.
    # With 15 scenarios, 4 (before the response models) and 7 (after) of 8 random seeds reached
    # a stored adapter; 60 make a miss unlikely whatever the schema.
    Workflow.run(
        settings=settings(
            max_examples=60,
            stateful_step_count=6,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    assert not [s for s in seen if s[1] >= 500]
    _assert_links(stateful_schema.raw_schema["paths"])
    chained = {op for op, status in seen if status in (200, 201)}
    # The links were followed: some call after the list reached a stored adapter.
    assert "GET /v1/adapters/{name}" in chained or "DELETE /v1/adapters/{name}" in chained, seen


def _assert_links(paths: dict[str, Any]) -> None:
    """list -> read -> pin/predict/download -> delete -> read: every step has an OpenAPI link."""
    links = {
        (path, method): set(op["responses"]["200"].get("links", {}))
        for path, ops in paths.items()
        if path.startswith("/v1/adapters")
        for method, op in ops.items()
        if "200" in op.get("responses", {})
    }
    assert {"GetFirst", "PredictFirst", "DeleteFirst"} <= links[("/v1/adapters", "get")]
    assert {"Pin", "PredictLatest", "DownloadLatest", "DeleteLatest", "DeleteAll"} <= links[
        ("/v1/adapters/{name}", "get")
    ]
    assert "GetAfterDelete" in links[("/v1/adapters/{name}", "delete")]
