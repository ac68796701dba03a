"""What every `switchyard` command shares: the root options, output, local errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console

from app.client import Client, render

# No markup or highlighting: adapter names, labels and texts are the user's, and "[x]" in one
# must print as it is.
out = Console(soft_wrap=True, markup=False, highlight=False)
err = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)

Json = Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")]
Version = Annotated[int | None, typer.Option("--version", "-v", help="a version number")]


class CliError(Exception):
    """A local mistake (a missing file, a malformed option) reported like an API error."""


@dataclass
class State:
    """The root options, shared by every command."""

    url: str | None
    key: str | None
    json: bool
    timeout: float

    def client(self) -> Client:
        """A client of the service these options name."""
        return Client(self.url, api_key=self.key, timeout=self.timeout)


def state_of(ctx: typer.Context, json_output: bool) -> State:
    """The root options; a command's own `--json` switches JSON on as the root's does."""
    state: State = ctx.find_root().obj
    if json_output:
        state.json = True
    return state


def show(state: State, value: BaseModel | list[Any], table: Any) -> None:
    """Print `value` as JSON with `--json`, else its rich table."""
    if state.json:
        typer.echo(render.as_json(value))
    else:
        out.print(table)


def done(state: State, value: BaseModel, message: str) -> None:
    """Print `value` as JSON with `--json`, else a one-line message."""
    if state.json:
        typer.echo(render.as_json(value))
    else:
        out.print(message)
