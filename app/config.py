"""One Settings object, built once at start-up and passed to every part that needs it.

Nothing below `app/` reads the environment: limits and paths arrive through this object, so
tests build a Settings with the values they need and the service validates them once.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Scope = Literal["predict", "train", "manage", "admin"]
SCOPES: tuple[Scope, ...] = ("predict", "train", "manage", "admin")


class Settings(BaseSettings):
    """Every knob of the service, prefixed `SWITCHYARD_` in the environment or a `.env` file."""

    model_config = SettingsConfigDict(
        env_prefix="SWITCHYARD_", env_file=".env", extra="ignore", validate_default=True
    )

    # --- the base model
    base_model: str = Field("minilm", description="minilm, smollm2, or a local HF folder")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16", "int8"] = Field(
        "auto",
        description="int8: float32 base whose linear layers run dynamic int8 kernels (CPU only)",
    )
    int8_activations: Literal["auto", "7bit", "8bit"] = Field(
        "auto",
        description="activation range of the int8 kernels: auto is 8bit on CPUs with VNNI or "
        "AMX int8 (int32 accumulation), else torch's 7bit, which cannot saturate",
    )
    int8_onednn_from_tokens: int = Field(
        128,
        ge=0,
        le=1_000_000,
        description="on CPUs with AMX int8, int8 calls of at least this many tokens run "
        "oneDNN's kernels (faster for many tokens), fewer fbgemm's; 0: fbgemm only",
    )
    train_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="what training's forward computes in on a float32 base: bfloat16 autocast "
        "needs a CPU with avx512_bf16 or AMX (or CUDA); a half-precision base trains in its own",
    )
    cache_dir: Path = Field(Path.home() / ".cache" / "switchyard", description="dequantized bases")

    # --- where things live
    store: Path = Path("./adapters")
    database_url: str | None = None
    database_busy_timeout_s: float = Field(
        5.0,
        gt=0,
        le=600,
        description="how long a catalog write waits for another writer's lock (SQLite) or a "
        "connection (PostgreSQL) before the request is a 503 database_unavailable",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    # --- auth: key (or "sha256:<hex>") -> scopes, optionally {"scopes": [...], "adapters": [...]}
    api_keys: dict[str, list[Scope] | dict[str, list[str]]] = Field(default_factory=dict)

    # --- adapter limits
    max_rank: int = Field(64, ge=1, le=1024)
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_dataset_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_corpus_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="largest text-only dataset (unlabeled corpus) upload; labeled datasets "
        "have max_dataset_bytes",
    )
    max_corpus_document_bytes: int = Field(
        1024 * 1024,
        ge=64,
        description="longest line (or paragraph) of a text-only dataset upload",
    )
    max_multipart_parts: int = Field(16, ge=1)
    body_read_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="a request body must arrive whole within this (else 408)"
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, le=300, description="an idle keep-alive connection is closed after this"
    )

    # --- inference limits
    max_inputs_per_request: int = Field(256, ge=1)
    max_input_tokens: int = Field(512, ge=8)
    truncate_inputs: bool = Field(True, description="truncate long inputs (else 4xx)")
    request_timeout_s: float = Field(60.0, gt=0)
    max_new_tokens: int = Field(256, ge=1)
    max_prompt_tokens: int = Field(1024, ge=8)

    # --- runtime: slots, tiers and the batcher
    max_slots: int = Field(128, ge=1, description="adapters resident on the device at once")
    device_bytes: int = Field(512 * 1024 * 1024, ge=0, description="budget for resident adapters")
    cpu_bytes: int = Field(1024 * 1024 * 1024, ge=0, description="budget for the CPU tier")
    max_batch_size: int = Field(64, ge=1)
    max_wait_ms: float = Field(2.0, ge=0)
    pack_max_tokens: int = Field(
        256, ge=0, description="tokens per packed sequence of an encoder batch (0: never pack)"
    )
    pack_max_adapters: int = Field(
        1,
        ge=0,
        description="pack only batches whose rows use at most this many adapter slots",
    )
    queue_size: int = Field(1024, ge=1, description="rows waiting for the batcher")

    # --- training
    max_concurrent_jobs: int = Field(1, ge=1)
    # Off in Ray runtime replicas: the trainer deployment leases the jobs (app/scaleout/trainer.py).
    train_in_process: bool = Field(True, description="run training workers in this process")
    max_training_rows: int = Field(200_000, ge=1)
    trainer_yield_ms: float = Field(
        200.0, ge=0, description="longest a training step waits for queued requests to drain"
    )
    checkpoint_activations: bool = Field(
        False,
        description="training recomputes each layer's activations in the backward pass: "
        "one layer's activations instead of all of them, for 1.4x the step time on MiniLM",
    )
    train_micro_batch_tokens: int | None = Field(
        None,
        ge=16,
        description="split each training batch into forwards of at most this many tokens "
        "(same gradients, lower activation peak); unset: whole batches",
    )
    train_lower_cache_mib: int = Field(
        256,
        ge=0,
        le=1 << 20,
        description="most memory a training run may keep the frozen lower layers' states of its "
        "rows in, when its adapter targets only upper layers (upper_layers); past it they are "
        "computed at every step",
    )
    shutdown_timeout_s: float = Field(30.0, gt=0, description="bound on draining at SIGTERM")

    # --- scale-out: replicas sharing a PostgreSQL catalog (app/scaleout, README "Scale-out")
    node_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=256,
        description="this machine in training leases; max_concurrent_jobs counts per node",
    )
    job_lease_s: float = Field(
        30.0, gt=0, le=3600, description="a training job whose node stops renewing fails then"
    )
    job_heartbeat_s: float = Field(10.0, gt=0, description="how often a node renews its leases")
    replica_max_adapters: int = Field(
        16, ge=1, description="max_num_models_per_replica of the Ray Serve runtime deployment"
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, value: dict[str, object]) -> dict[str, object]:
        for key, spec in value.items():
            if len(key) < 16 and not key.startswith("sha256:"):
                raise ValueError("API keys must be at least 16 characters (or sha256:<hex>)")
            scopes = spec.get("scopes") if isinstance(spec, dict) else spec
            if not scopes:
                raise ValueError("every API key needs at least one scope")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value in {"auto", "cpu", "cuda", "mps"} or value.startswith("cuda:"):
            return value
        raise ValueError(f"device {value!r} is not one of auto, cpu, cuda, cuda:N, mps")

    @model_validator(mode="after")
    def _check_int8(self) -> Settings:
        # Refused, not mapped: a silent bf16 would hide that the operator asked for int8.
        if self.dtype == "int8" and self.device != "auto" and self.device != "cpu":
            raise ValueError(
                f"dtype 'int8' needs device cpu, not {self.device!r}: the int8 kernels are "
                "CPU-only; on CUDA use dtype auto (bfloat16 or float16)"
            )
        if self.dtype == "int8" and self.train_dtype != "float32":
            raise ValueError(
                f"train_dtype {self.train_dtype!r} needs a float base, not dtype 'int8': training "
                "on an int8 base runs its float32 int8 kernels"
            )
        return self

    @model_validator(mode="after")
    def _check_exposure(self) -> Settings:
        # An unauthenticated management API on a public interface is how TorchServe got owned.
        if not self.api_keys and not _is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is not loopback and no SWITCHYARD_API_KEYS are configured; "
                "set keys or bind 127.0.0.1"
            )
        if self.replica_max_adapters > self.max_slots:
            raise ValueError(
                f"replica_max_adapters {self.replica_max_adapters} > max_slots {self.max_slots}: "
                "each adapter Ray keeps on a replica holds one of its slots"
            )
        if self.job_heartbeat_s >= self.job_lease_s:
            raise ValueError(
                f"job_heartbeat_s {self.job_heartbeat_s} must be below job_lease_s "
                f"{self.job_lease_s}, or a live job's lease expires between two heartbeats"
            )
        if self.max_corpus_document_bytes > self.max_corpus_bytes:
            raise ValueError(
                f"max_corpus_document_bytes {self.max_corpus_document_bytes} > "
                f"max_corpus_bytes {self.max_corpus_bytes}: no document could be that long"
            )
        if self.max_upload_bytes > self.max_body_bytes * 64:
            raise ValueError(
                f"max_upload_bytes {self.max_upload_bytes} > 64 * max_body_bytes; "
                "raise the body limit"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        """SQLite inside the store unless a URL is given."""
        return self.database_url or f"sqlite:///{(self.store / 'switchyard.db').resolve()}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
