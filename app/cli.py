"""`switchyard`: run the service (`serve`), or drive a running one through `app.client`.

    switchyard serve --port 8000
    switchyard adapters ls | show NAME | push DIR | pull NAME DIR | rm NAME | pin NAME
    switchyard datasets push FILE | ls | show ID | rm ID
    switchyard train --adapter NAME --data FILE [--method lora] [--follow]
    switchyard jobs ls | show ID | cancel ID | follow ID
    switchyard predict NAME TEXT...      switchyard embed TEXT...

`--url` and `--key` (or SWITCHYARD_URL, SWITCHYARD_KEY) say where; `--json` prints JSON for
scripts. Exit status: 0 on success, 1 on an API error (its message and code go to stderr) or a
job that did not succeed, 2 on a usage error.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer

from app.cli_common import CliError, Json, State, Version, err, out, show, state_of
from app.cli_groups import adapters_app, datasets_app, jobs_app, train
from app.client import SwitchyardAPIError, SwitchyardClientError, render
from app.client.config import KEY_ENV, URL_ENV

app = typer.Typer(
    name="switchyard",
    help=__doc__.split("\n\n")[0],
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(adapters_app, name="adapters")
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")
app.command()(train)


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option(envvar=URL_ENV, help="the service [default: 127.0.0.1:8000]")
    ] = None,
    key: Annotated[str | None, typer.Option(envvar=KEY_ENV, help="API key (Bearer)")] = None,
    json_output: Json = False,
    timeout: Annotated[float, typer.Option(help="seconds per request")] = 60.0,
) -> None:
    """Run the service, or manage adapters, datasets and training jobs on a running one."""
    ctx.obj = State(url=url, key=key, json=json_output, timeout=timeout)


# ---------------------------------------------------------------- serve
@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="[default: SWITCHYARD_HOST or 127.0.0.1]")
    ] = None,
    port: Annotated[int | None, typer.Option(help="[default: SWITCHYARD_PORT or 8000]")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level")] = "info",
    replicas: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="run on a local Ray cluster with this many runtime replicas "
            "(needs the `ray` extra); default: one plain process",
        ),
    ] = None,
) -> None:
    """Start the service (settings from SWITCHYARD_* and .env)."""
    code = _serve(host=host, port=port, log_level=log_level, replicas=replicas)
    if code:
        raise typer.Exit(code)


def _serve(*, host: str | None, port: int | None, log_level: str, replicas: int | None) -> int:
    import uvicorn
    from pydantic import ValidationError

    from app.config import Settings
    from app.main import create_app

    overrides: dict[str, Any] = {
        k: v for k, v in {"host": host, "port": port}.items() if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"switchyard: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if replicas is not None:
        from app.scaleout.cluster import serve_on_ray

        return serve_on_ray(settings, replicas=replicas)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
        # Idle keep-alive connections are closed after this (uvicorn's knob; a slow body is
        # bounded by the body-limit middleware's read deadline).
        timeout_keep_alive=max(1, round(settings.keep_alive_timeout_s)),
    )

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, with readiness turned to 503 the moment SIGTERM arrives."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            # Load balancers see 'draining' at once; uvicorn then stops accepting, lets
            # in-flight requests finish within the bound, and runs the lifespan shutdown,
            # where training jobs are interrupted cleanly.
            app.state.readiness = "draining"
            super().handle_exit(sig, frame)

    DrainingServer(config).run()
    return 0


@app.command()
def info(ctx: typer.Context, json_output: Json = False) -> None:
    """The base model, methods, tasks and limits of the service."""
    state = state_of(ctx, json_output)
    with state.client() as sy:
        result = sy.info()
    if state.json:
        typer.echo(render.as_json(result))
        return
    base = result.base_model
    out.print(f"base: {base.name} ({base.kind}, {base.parameters} parameters, {base.device})")
    out.print(f"fingerprint: {base.fingerprint}")
    out.print(f"methods: {', '.join(result.methods)}; tasks: {', '.join(result.tasks)}")


# ---------------------------------------------------------------- inference
@app.command()
def predict(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the adapter")],
    texts: Annotated[list[str], typer.Argument(help="one or more inputs")],
    version: Version = None,
    top_k: Annotated[int | None, typer.Option(help="labels per input (classification)")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="generation")] = None,
    json_output: Json = False,
) -> None:
    """Pipeline-shaped outputs of an adapter, one per input."""
    state = state_of(ctx, json_output)
    given = {"top_k": top_k, "max_new_tokens": max_new_tokens}
    parameters = {k: v for k, v in given.items() if v is not None}
    with state.client() as sy:
        result = sy.predict(name, texts, parameters=parameters, version=version)
    show(state, result, render.prediction_table(texts, result))


@app.command()
def embed(
    ctx: typer.Context,
    texts: Annotated[list[str], typer.Argument(help="one or more inputs")],
    adapter: Annotated[str | None, typer.Option(help="a LoRA adapter applied to the base")] = None,
    pooling: Annotated[str | None, typer.Option(help="mean, cls or max")] = None,
    layer: Annotated[list[int] | None, typer.Option(help="a hidden layer (repeatable)")] = None,
    json_output: Json = False,
) -> None:
    """Embeddings of texts (the base, or the base with an adapter)."""
    state = state_of(ctx, json_output)
    with state.client() as sy:
        result = sy.embed(texts, adapter=adapter, pooling=pooling, layers=layer or None)
    show(state, result, render.embeddings_table(texts, result))


# ---------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Entry point of the `switchyard` console script; returns the exit status.

    Typer handles usage errors (status 2) and help; an API error, a broken connection or a
    local mistake is printed as one line on stderr (status 1) instead of a traceback.
    """
    try:
        app(args=argv, prog_name="switchyard")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except SwitchyardAPIError as exc:
        err.print(f"error: {exc.message} ({exc.code}, HTTP {exc.status})")
        return 1
    except (SwitchyardClientError, CliError, OSError) as exc:
        err.print(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
