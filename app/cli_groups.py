"""`switchyard adapters|datasets|jobs ...` and `switchyard train`: the resource commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel

from app.cli_common import CliError, Json, State, Version, done, err, out, show, state_of
from app.client import Client, TrainingJob, render

adapters_app = typer.Typer(
    help="Adapters: list, show, push, pull, remove, pin.", no_args_is_help=True
)
datasets_app = typer.Typer(help="Datasets: push, list, show, remove.", no_args_is_help=True)
jobs_app = typer.Typer(help="Training jobs: list, show, cancel, follow.", no_args_is_help=True)

T = TypeVar("T", bound="BaseModel | list[Any]")


def _show(
    ctx: typer.Context, json_output: bool, fetch: Callable[[Client], T], table: Callable[[T], Any]
) -> None:
    """One read-only call, shown as a table (or as JSON with --json)."""
    state = state_of(ctx, json_output)
    with state.client() as sy:
        value = fetch(sy)
    show(state, value, table(value))


# ---------------------------------------------------------------- adapters
@adapters_app.command("ls")
def adapters_ls(ctx: typer.Context, json_output: Json = False) -> None:
    """List adapters with their latest version, size and residency."""
    _show(ctx, json_output, lambda sy: sy.list_adapters(), render.adapters_table)


@adapters_app.command("show")
def adapters_show(ctx: typer.Context, name: str, json_output: Json = False) -> None:
    """An adapter's versions, lineage and metrics."""
    _show(ctx, json_output, lambda sy: sy.get_adapter(name), render.adapter_table)


@adapters_app.command("push")
def adapters_push(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="a PEFT folder (adapter_config.json, ...)")],
    name: Annotated[str | None, typer.Option(help="[default: the folder's name]")] = None,
    task: Annotated[
        str | None, typer.Option(help="[default: switchyard.json's or classification]")
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="labels in head order: a,b,c or a JSON list")
    ] = None,
    json_output: Json = False,
) -> None:
    """Upload a PEFT adapter folder as the next version of an adapter."""
    state = state_of(ctx, json_output)
    adapter = name or folder.resolve().name
    with state.client() as sy:
        created = sy.upload_adapter(adapter, folder, task=task, labels=_labels(labels))
    done(state, created, f"pushed {adapter} v{created.version} ({created.method}, {created.task})")


def _labels(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    if raw.lstrip().startswith("["):
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise CliError(f"--labels is not a JSON list: {exc}") from exc
        if not isinstance(parsed, list):
            raise CliError("--labels must be a JSON list of strings")
        return [str(x) for x in parsed]
    return [part.strip() for part in raw.split(",") if part.strip()]


@adapters_app.command("pull")
def adapters_pull(
    ctx: typer.Context, name: str, folder: Path, version: Version = None, json_output: Json = False
) -> None:
    """Download an adapter into a folder that loads with `PeftModel.from_pretrained`."""
    state = state_of(ctx, json_output)
    with state.client() as sy:
        written = sy.download_adapter(name, folder, version=version)
    if state.json:
        typer.echo(json.dumps([str(p) for p in written]))
    else:
        out.print(f"pulled {name} into {folder}: {', '.join(p.name for p in written)}")


@adapters_app.command("rm")
def adapters_rm(
    ctx: typer.Context, name: str, version: Version = None, json_output: Json = False
) -> None:
    """Remove an adapter (all versions, or `--version N`)."""
    state = state_of(ctx, json_output)
    with state.client() as sy:
        removed = sy.delete_adapter(name, version=version)
    versions = ", ".join(f"v{v}" for v in removed.deleted_versions)
    done(state, removed, f"removed {name} {versions}")


@adapters_app.command("pin")
def adapters_pin(
    ctx: typer.Context,
    name: str,
    off: Annotated[bool, typer.Option("--off", help="unpin instead")] = False,
    json_output: Json = False,
) -> None:
    """Keep an adapter resident on the device (`--off` lets it be evicted again)."""
    state = state_of(ctx, json_output)
    with state.client() as sy:
        result = sy.pin_adapter(name, not off)
    done(state, result, f"{name}: {'pinned' if result.pinned else 'unpinned'} ({result.resident})")


@adapters_app.command("unpin")
def adapters_unpin(ctx: typer.Context, name: str, json_output: Json = False) -> None:
    """Let a pinned adapter be evicted again."""
    adapters_pin(ctx, name, off=True, json_output=json_output)


# ---------------------------------------------------------------- datasets
@datasets_app.command("push")
def datasets_push(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="a JSONL or CSV file in API.md's row format")],
    name: Annotated[str | None, typer.Option(help="[default: the file's name]")] = None,
    json_output: Json = False,
) -> None:
    """Upload a dataset; it is validated row by row."""
    state = state_of(ctx, json_output)
    with state.client() as sy:
        created = _push_dataset(sy, file, name)
    done(state, created, f"pushed {created.id} ({created.rows} rows, {created.task})")


def _push_dataset(sy: Client, file: Path, name: str | None) -> Any:
    if not file.is_file():
        raise CliError(f"no file {file}")
    return sy.upload_dataset(file, name=name)


@datasets_app.command("ls")
def datasets_ls(ctx: typer.Context, json_output: Json = False) -> None:
    """List datasets, newest first."""
    _show(ctx, json_output, lambda sy: sy.list_datasets(), render.datasets_table)


@datasets_app.command("show")
def datasets_show(ctx: typer.Context, dataset_id: str, json_output: Json = False) -> None:
    """One dataset: rows, columns, task and label counts."""
    _show(
        ctx,
        json_output,
        lambda sy: sy.get_dataset(dataset_id),
        lambda d: render.datasets_table([d]),
    )


@datasets_app.command("rm")
def datasets_rm(ctx: typer.Context, dataset_id: str, json_output: Json = False) -> None:
    """Remove a dataset."""
    state = state_of(ctx, json_output)
    with state.client() as sy:
        removed = sy.delete_dataset(dataset_id)
    done(state, removed, f"removed {dataset_id}")


# ---------------------------------------------------------------- training
def train(
    ctx: typer.Context,
    adapter: Annotated[str, typer.Option(help="the adapter a finished job adds a version to")],
    data: Annotated[str, typer.Option(help="a JSONL/CSV file (uploaded first) or a dataset id")],
    validation: Annotated[str | None, typer.Option(help="a file or dataset id")] = None,
    method: Annotated[
        str, typer.Option(help="auto, lora, ia3, prompt, prefix, linear_probe, contrastive")
    ] = "auto",
    task: Annotated[str | None, typer.Option(help="[default: the data's]")] = None,
    epochs: Annotated[int | None, typer.Option(help="[default: from the data]")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="[default: per method]")] = None,
    hp: Annotated[
        list[str] | None, typer.Option(help="a hyperparameter KEY=VALUE (JSON value)")
    ] = None,
    follow: Annotated[bool, typer.Option(help="show progress until the job ends")] = False,
    json_output: Json = False,
) -> None:
    """Start a training job; with --follow, exit non-zero unless it succeeds."""
    state = state_of(ctx, json_output)
    hyperparameters = _hyperparameters(hp or [])
    hyperparameters.update(
        {
            k: v
            for k, v in {"epochs": epochs, "learning_rate": learning_rate}.items()
            if v is not None
        }
    )
    with state.client() as sy:
        job = sy.create_job(
            adapter,
            training_data=_dataset_id(sy, data),
            validation_data=_dataset_id(sy, validation) if validation else None,
            task=task,
            method=method,
            hyperparameters=hyperparameters,
        )
        if not follow:
            done(
                state,
                job,
                f"started {job.id} ({job.status}); follow: switchyard jobs follow {job.id}",
            )
            return
        err.print(f"started {job.id}")
        _follow(state, sy, job)


def _hyperparameters(pairs: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--hp {pair!r} is not KEY=VALUE")
        try:
            values[key.strip()] = json.loads(raw)
        except ValueError:
            values[key.strip()] = raw  # a bare word, such as target_modules=all-linear
    return values


def _dataset_id(sy: Client, value: str) -> str:
    path = Path(value)
    if path.is_file():
        created = sy.upload_dataset(path)
        err.print(f"uploaded {path} as {created.id} ({created.rows} rows, {created.task})")
        return created.id
    if value.startswith("ds_"):
        return value
    raise CliError(f"--data {value!r} is neither a file nor a dataset id (ds_...)")


def _follow(state: State, sy: Client, job: TrainingJob) -> None:
    if state.json:
        for event in sy.follow(job.id):
            typer.echo(json.dumps(event.model_dump(mode="json")))
        final = sy.get_job(job.id)
        typer.echo(json.dumps(final.model_dump(mode="json")))
    else:
        with render.JobProgress(sy, job, err) as display:
            for event in sy.follow(job.id):
                display.update(event)
        final = sy.get_job(job.id)
        out.print(render.job_table(final))
    if final.status != "succeeded":
        reason = f": {final.error.message} ({final.error.code})" if final.error else ""
        err.print(f"job {final.id} {final.status}{reason}")
        raise typer.Exit(1)


# ---------------------------------------------------------------- jobs
@jobs_app.command("ls")
def jobs_ls(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="only jobs with this status")] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 20,
    json_output: Json = False,
) -> None:
    """List training jobs, newest first."""
    _show(ctx, json_output, lambda sy: sy.list_jobs(limit=limit, status=status), render.jobs_table)


@jobs_app.command("show")
def jobs_show(ctx: typer.Context, job_id: str, json_output: Json = False) -> None:
    """A job's status, progress, best evaluation, result or error."""
    _show(ctx, json_output, lambda sy: sy.get_job(job_id), render.job_table)


@jobs_app.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: str, json_output: Json = False) -> None:
    """Stop a queued or running job; nothing it made is registered."""
    state = state_of(ctx, json_output)
    with state.client() as sy:
        job = sy.cancel_job(job_id)
    done(state, job, f"{job.id}: {job.status}")


@jobs_app.command("follow")
def jobs_follow(ctx: typer.Context, job_id: str, json_output: Json = False) -> None:
    """Show a job's progress until it ends; exit non-zero unless it succeeds."""
    state = state_of(ctx, json_output)
    with state.client() as sy:
        _follow(state, sy, sy.get_job(job_id))
