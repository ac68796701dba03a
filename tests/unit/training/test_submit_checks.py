"""The submit-time dry run: a job that could only fail on its own values is a 400 at once.

Each case of the black-box review (issue 13, item 4) and every hyperparameter's bad values
(wrong type, NaN, infinities, negative, huge, empty, unknown key) are refused when the job is
created, with `param` naming the field and nothing stored; target modules resolve exactly as
PEFT matches them on the real view.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import LoraConfig, TaskType, get_peft_model
from peft.tuners.tuners_utils import BaseTuner

from app.base import FrozenBase
from app.config import Settings
from app.db import Database, open_database
from app.errors import SwitchyardError
from app.training.datasets import DatasetService
from app.training.hyperparameters import Hyperparameters
from app.training.jobs import JobManager
from app.training.preflight import preflight
from app.training.targets import resolve_targets, view_modules
from app.training.types import TrainingPlan
from app.training.view import build_view
from tests.unit.method_adapters import register_files
from tests.unit.reporters import RecordingReporter
from tests.unit.training.test_jobs import EXAMPLES, FakeRegistry, FakeTrainer, finished, wait_for

MAX_RANK, MAX_TOKENS = 64, 512


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = open_database(settings)
    yield database
    database.dispose()


@pytest.fixture
def manager(db: Database, settings: Settings, tiny_base: FrozenBase) -> Iterator[JobManager]:
    jobs = JobManager(
        db,
        DatasetService(db, settings),
        settings,
        train_fn=FakeTrainer(),
        register_fn=FakeRegistry().register,
        check_plan=functools.partial(
            preflight, base=tiny_base, max_rank=MAX_RANK, max_tokens=MAX_TOKENS
        ),
        poll_interval_s=0.02,
        progress_interval_s=0.0,
    )
    jobs.start()
    yield jobs
    jobs.shutdown(timeout=2)


def submit(manager: JobManager, method: str = "lora", **hp: Any) -> SwitchyardError:
    with pytest.raises(SwitchyardError) as caught:
        manager.create(
            {"adapter": "x", "method": method, "examples": EXAMPLES, "hyperparameters": hp}
        )
    assert manager.list() == []  # nothing stored
    return caught.value


# ---------------------------------------------------------------- the review's cases
@pytest.mark.parametrize(
    ("method", "hp", "param", "says"),
    [
        ("lora", {"target_modules": ["nothing"]}, "target_modules", "matches no module"),
        ("lora", {"target_modules": ".*"}, "target_modules", "not an adaptable linear layer"),
        ("lora", {"target_modules": []}, "target_modules", "at least 1 item"),
        ("ia3", {"target_modules": ["intermediate"]}, "target_modules", "'bert.encoder"),
        ("lora", {"target_modules": "(?=query)"}, "target_modules", "linear-time"),
        ("lora", {"target_modules": "[unclosed"}, "target_modules", "not a valid regular"),
        ("lora", {"seed": 2**63}, "seed", "4294967295"),
        ("lora", {"seed": -1}, "seed", "greater than or equal to 0"),
        ("linear_probe", {"layers": [99]}, "layers", "[-3, 2]"),
        ("linear_probe", {"layers": [-4]}, "layers", "[-3, 2]"),
        ("lora", {"alpha": 1e308}, "alpha", "262144"),
        ("lora", {"alpha": 4096.0, "rank": 2}, "alpha", "LoRA scale 2048 > limit 256"),
        ("lora", {"rank": 65}, "rank", "rank 65 > max_rank 64"),
        ("prompt", {"max_length": 120}, "max_length", "max_length 120 > 108"),
        ("prompt", {"num_virtual_tokens": 125}, "num_virtual_tokens", "128 positions"),
        ("lora", {"max_length": 600}, "max_length", "max_input_tokens 512"),
    ],
)
def test_a_user_mistake_is_a_400_at_submission(
    manager: JobManager, method: str, hp: dict[str, Any], param: str, says: str
) -> None:
    error = submit(manager, method, **hp)
    assert (error.status, error.code) == (400, "invalid_hyperparameter")
    assert error.param == f"hyperparameters.{param}"
    assert says in error.message, error.message
    assert len(error.message) < 400 and "BertModel(" not in error.message


def test_a_catastrophic_pattern_is_matched_in_linear_time(manager: JobManager) -> None:
    """PEFT would run `re.fullmatch` on every module name; RE2 answers at once."""
    error = submit(manager, target_modules="(" + "[a-z.]+" + ")+Z")
    assert error.param == "hyperparameters.target_modules" and "matches no module" in error.message


def test_task_and_base_kind_are_checked_at_submission(manager: JobManager) -> None:
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(4)]
    with pytest.raises(SwitchyardError) as caught:
        manager.create({"adapter": "x", "task": "generation", "examples": rows})
    assert (caught.value.code, caught.value.param) == ("unsupported_task", "task")
    assert manager.list() == []


def test_lone_surrogates_in_hyperparameters_are_refused(manager: JobManager) -> None:
    error = submit(manager, target_modules=["query\ud800"])
    assert error.param is not None
    assert error.code == "invalid_text" and error.param.startswith("hyperparameters")


def test_good_values_pass_and_the_job_runs(manager: JobManager) -> None:
    job = manager.create(
        {
            "adapter": "x",
            "examples": EXAMPLES,
            "hyperparameters": {
                "target_modules": ["query", "value"],
                "seed": 2**32 - 1,
                "alpha": 16,
                "layers": [-3, 2],
                "learning_rate": 1,
            },
        }
    )
    wait_for(finished(manager, job["id"]))
    assert manager.get(job["id"])["status"] == "succeeded"


# ---------------------------------------------------------------- every hyperparameter
NAN, INF = math.nan, math.inf
HUGE = 10**400
BAD_VALUES: dict[str, list[Any]] = {
    "epochs": [True, "3", 2.5, 0, -1, 101, HUGE, NAN, [], {}],
    "batch_size": [False, "8", 8.0, 0, -8, 513, HUGE, NAN, INF, None],
    "learning_rate": [True, "0.1", 0, -1e-3, 1.5, HUGE, NAN, INF, -INF, []],
    "head_learning_rate": [True, "1", 0, -1.0, 11.0, HUGE, NAN, INF, [1e-3]],
    "weight_decay": [True, "0", -0.1, 1.5, HUGE, NAN, INF, None],
    "warmup_ratio": [True, "0.1", -0.1, 1, 1.0, HUGE, NAN, INF, None],
    "rank": [True, "8", 8.0, 0, -8, 65, 2000, HUGE, NAN, None],
    "alpha": [True, "16", 0, -16.0, 1e308, HUGE, NAN, INF, [16]],
    "dropout": [True, "0.1", -0.1, 1.0, HUGE, NAN, INF, None],
    "target_modules": [
        True,
        5,
        [],
        [""],
        ["query", 5],
        "x" * 300,
        ["q"] * 1025,
        ".*",
        None,
        {"query": 1},
        "nothing",
    ],
    "upper_layers": [True, "2", 2.0, 0, -1, 3, 1025, HUGE, NAN],
    "num_virtual_tokens": [True, "20", 20.0, 0, -1, 257, HUGE, NAN, None],
    "max_length": [True, "64", 64.0, 7, -64, 513, HUGE, NAN, INF],
    "seed": [True, "1", 1.0, -1, 2**32, 2**63, HUGE, NAN, None],
    "early_stopping_patience": [True, "2", 2.0, 0, -2, 10**5, HUGE, NAN],
    "eval_every_steps": [True, "10", 10.0, 0, -10, 10**8, HUGE, NAN],
    "log_every_steps": [True, "10", 10.0, 0, -10, 10**8, HUGE, NAN, None],
    "head_init": [True, 1, "zeros", "", None, []],
    "layers": [True, -1, [], [1.0], ["1"], [True], [99], [-99], list(range(17)), [HUGE], None],
    "pooling": [True, 1, "sum", "", None, []],
    "max_steps": [True, "5", 5.0, 0, -5, 10**8, HUGE, NAN],
    "selection": [True, 1, "best", "", None, [], "AUTO"],
    "budget_seconds": [True, "60", 0, -1.0, 0.5, 10**9, HUGE, NAN, INF, None],
    "mask_probability": [True, "0.15", 0, 1, 1.5, -0.1, HUGE, NAN, INF, None],
    "whole_word_mask": [1, "true", None, []],
    "keep_head": [1, "true", None, []],
    "stride": [True, "4", 4.0, -1, 10**7, HUGE, NAN],
}
CASES = [(field, value) for field, values in BAD_VALUES.items() for value in values]


def test_the_table_covers_every_hyperparameter() -> None:
    assert set(BAD_VALUES) == set(Hyperparameters.model_fields)


def plan(method: str, hp: dict[str, Any]) -> TrainingPlan:
    return TrainingPlan(
        adapter="x",
        task="classification",
        method=method,
        train_rows=EXAMPLES,
        validation_rows=EXAMPLES,
        labels=["neg", "pos"],
        hyperparameters=hp,
    )


@pytest.mark.parametrize(("field", "value"), CASES, ids=[f"{f}={v!r:.20}" for f, v in CASES])
def test_each_bad_value_is_a_400_naming_its_field(
    tiny_base: FrozenBase, field: str, value: Any
) -> None:
    method = "linear_probe" if field in ("layers", "pooling") else "lora"
    method = "prompt" if field == "num_virtual_tokens" else method
    with pytest.raises(SwitchyardError) as caught:
        preflight(
            plan(method, {field: value}), base=tiny_base, max_rank=MAX_RANK, max_tokens=MAX_TOKENS
        )
    assert (caught.value.status, caught.value.code) == (400, "invalid_hyperparameter")
    assert caught.value.param == f"hyperparameters.{field}"
    assert len(caught.value.message) < 400


@pytest.mark.parametrize("key", ["epoch", "lr", "learningRate", "", "target-modules"])
def test_an_unknown_key_is_a_400_naming_it(tiny_base: FrozenBase, key: str) -> None:
    with pytest.raises(SwitchyardError) as caught:
        preflight(plan("lora", {key: 1}), base=tiny_base, max_rank=MAX_RANK, max_tokens=MAX_TOKENS)
    assert caught.value.param == f"hyperparameters.{key}"
    assert "Extra inputs are not permitted" in caught.value.message


def test_every_default_passes(tiny_base: FrozenBase) -> None:
    for method in ("lora", "ia3", "prompt", "prefix", "linear_probe"):
        setup = preflight(
            plan(method, {}), base=tiny_base, max_rank=MAX_RANK, max_tokens=MAX_TOKENS
        )
        assert setup.targets is None
        assert setup.max_length_cap == (108 if method == "prompt" else 128)


# ---------------------------------------------------------------- PEFT's own matching
def peft_targets(base: FrozenBase, target_modules: str | list[str]) -> list[str] | Exception:
    view = build_view(base, task="classification", num_labels=2)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=2,
        target_modules=target_modules,
        modules_to_save=["classifier"],
    )
    try:
        model = get_peft_model(view, config)
    except ValueError as exc:
        return exc
    return sorted(cast(BaseTuner, model.base_model).targeted_module_names)


def suffixes(base: FrozenBase) -> list[str]:
    names = view_modules(base).names
    return sorted({".".join(n.split(".")[-k:]) for n in names for k in (1, 2)})


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_targets_resolve_as_peft_matches_them(tiny_base: FrozenBase, data: st.DataObject) -> None:
    """Where the dry run accepts, PEFT adapts exactly the resolved modules; where it refuses,
    PEFT fails too (or would adapt a module the service cannot serve)."""
    pool = suffixes(tiny_base)
    spec: str | list[str] = data.draw(
        st.one_of(
            st.lists(
                st.sampled_from([*pool, "nothing", "dropout"]), min_size=1, max_size=4, unique=True
            ),
            st.sampled_from(
                [
                    r".*\.(query|value)",
                    r".*layer\.0.*",
                    r"bert\.pooler\.dense",
                    ".*",
                    r".*dense",
                    r".*attention.*",
                    "query",
                ]
            ),
        )
    )
    theirs = peft_targets(tiny_base, spec)
    try:
        ours = resolve_targets(tiny_base, spec)
    except SwitchyardError:
        linear = view_modules(tiny_base).linear
        assert isinstance(theirs, Exception) or not set(theirs) <= linear or not theirs
        return
    assert ours is not None and ours == theirs


def test_the_http_api_answers_400_and_stores_nothing(client: TestClient) -> None:
    body = {"adapter": "x", "examples": EXAMPLES, "hyperparameters": {"target_modules": ".*"}}
    response = client.post("/v1/training-jobs", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (
        "invalid_hyperparameter",
        "hyperparameters.target_modules",
    )
    assert client.get("/v1/training-jobs").json()["data"] == []


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_resolved_targets_train_register_and_load(
    tiny_base: FrozenBase, settings: Settings, method: str
) -> None:
    """The trainer hands PEFT the resolved names; the registry takes the result and the
    adapter holds exactly those layers."""
    import json

    from app.registry.catalog import Registry
    from app.registry.store import CONFIG_FILE, AdapterStore
    from app.training.trainer import train
    from app.training.types import CancelToken

    hp = {"target_modules": r".*\.(query|value)", "max_steps": 2, "head_init": "random"}
    outcome = train(
        plan(method, hp),
        base=tiny_base,
        reporter=RecordingReporter(),
        cancel=CancelToken(),
        max_rank=MAX_RANK,
        max_tokens=MAX_TOKENS,
    )
    config = json.loads(outcome.files[CONFIG_FILE])
    wanted = [
        f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")
    ]
    assert sorted(config["target_modules"]) == wanted
    registry = Registry(AdapterStore(settings.store), tiny_base, settings)
    version = register_files(
        registry, "resolved", outcome.files, task="classification", labels=["neg", "pos"]
    )
    weights = registry.load_weights("resolved", version)
    layers = weights.lora if method == "lora" else weights.ia3
    assert sorted(layers) == [w.removeprefix("bert.") for w in wanted]
