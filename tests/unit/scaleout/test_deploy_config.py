"""deploy/serve.yaml is a valid Serve config whose import path builds our application, and
the scale-out settings refuse values that cannot work."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from app.config import Settings

ROOT = Path(__file__).resolve().parents[3]


def test_the_serve_config_validates_and_points_at_the_builder() -> None:
    yaml = pytest.importorskip("yaml")
    schema = pytest.importorskip("ray.serve.schema")
    config = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    deploy = schema.ServeDeploySchema.model_validate(config)
    (application,) = deploy.applications
    module, _, attribute = application.import_path.partition(":")
    builder = getattr(importlib.import_module(module), attribute)
    assert callable(builder) and application.args["replicas"] >= 1


def test_scaleout_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="replica_max_adapters"):
        Settings(store=tmp_path, _env_file=None, replica_max_adapters=9, max_slots=8)
    with pytest.raises(ValueError, match="job_lease_s"):
        Settings(store=tmp_path, _env_file=None, job_lease_s=2, job_heartbeat_s=3)
    settings = Settings(store=tmp_path, _env_file=None, node_name="n1")
    assert settings.node_name == "n1" and settings.job_heartbeat_s < settings.job_lease_s
