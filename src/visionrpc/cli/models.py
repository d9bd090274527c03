"""``visionrpc models``: list the server's models (the group's own command), load, unload, reload.

Load, unload and reload need a token with the ``models`` scope when the server checks tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from visionrpc.cli.common import (
    Connection,
    TargetOpt,
    connection_options,
    rpc_errors,
    table_console,
)
from visionrpc.types import ModelDescription, ModelState

if TYPE_CHECKING:
    from visionrpc.client import Client

models_app = typer.Typer(
    help="List the server's models (no subcommand), or load, unload or reload one.",
    invoke_without_command=True,
    no_args_is_help=False,
)

NameArg = Annotated[
    str, typer.Argument(help="The model: a NAME.onnx or NAME/ of the server's models directory.")
]
Json = Annotated[bool, typer.Option("--json", help="Print the model's entry as JSON.")]
ListJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
All = Annotated[
    bool,
    typer.Option("--all", help="Also list the models of the directory that do not serve, and why."),
]


@models_app.callback()
@connection_options
def _list_without_subcommand(
    ctx: typer.Context,
    target: TargetOpt = None,
    json_out: ListJson = False,
    all_models: All = False,
    *,
    connection: Connection,
) -> None:
    """List the models the server serves (`visionrpc models`), or run a subcommand."""
    if ctx.invoked_subcommand is None:
        _print_models(target, json_out, all_models, connection)


@models_app.command("list")
@connection_options
def list_models(
    target: TargetOpt = None,
    json_out: ListJson = False,
    all_models: All = False,
    *,
    connection: Connection,
) -> None:
    """List the models the server serves."""
    _print_models(target, json_out, all_models, connection)


@models_app.command("load")
@connection_options
def load(
    name: NameArg, target: TargetOpt = None, json_out: Json = False, *, connection: Connection
) -> None:
    """Load a model of the server's directory; reload it when it is loaded (zero-downtime)."""
    _control(lambda client: client.load_model(name), target, json_out, connection)


@models_app.command("reload")
@connection_options
def reload(
    name: NameArg, target: TargetOpt = None, json_out: Json = False, *, connection: Connection
) -> None:
    """Reload a loaded model from its files: the new version serves once loaded and warmed, the
    old one finishes the requests it holds."""
    _control(lambda client: client.reload_model(name), target, json_out, connection)


@models_app.command("unload")
@connection_options
def unload(
    name: NameArg, target: TargetOpt = None, json_out: Json = False, *, connection: Connection
) -> None:
    """Stop serving a model; requests already running finish."""
    _control(lambda client: client.unload_model(name), target, json_out, connection)


def _control(
    call: Callable[[Client], ModelDescription],
    target: str | None,
    json_out: bool,
    connection: Connection,
) -> None:
    from visionrpc.client import Client

    with rpc_errors(target), Client(target, **connection.client_kwargs()) as client:
        info = call(client)
    if json_out:
        entry = {"name": info.name, "version": info.version, "state": info.state.value}
        if info.state is ModelState.READY:
            entry = {**asdict(info), "task": info.task.value, "layout": info.layout.value}
        typer.echo(json.dumps({**entry, "state_reason": info.state_reason}, indent=2))
        return
    reason = f" ({info.state_reason})" if info.state_reason else ""
    typer.echo(f"{info.name}: version {info.version or '-'}, {info.state.value}{reason}")


def _print_models(
    target: str | None, json_out: bool, all_models: bool, connection: Connection
) -> None:
    from visionrpc.client import Client

    with rpc_errors(target), Client(target, **connection.client_kwargs()) as client:
        infos, default = client.list_models(include_unavailable=all_models)
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "default_model": default,
                    "models": [
                        {**asdict(i), "task": i.task.value, "layout": i.layout.value} for i in infos
                    ],
                },
                indent=2,
            )
        )
        return
    table = Table(title="models")
    for col in (
        "name",
        "version",
        "task",
        "input",
        "classes",
        "provider",
        "conf",
        "iou",
        "max det",
        "agnostic nms",
        *(("state",) if all_models else ()),
    ):
        table.add_column(col, overflow="fold")
    for i in infos:
        name = i.name + (" (default)" if i.name == default else "")
        state = f"{i.state.value}: {i.state_reason}" if i.state_reason else i.state.value
        if i.state is not ModelState.READY:  # only name, version and state are known
            table.add_row(name, i.version or "-", *["-"] * 8, state)
            continue
        table.add_row(
            name,
            i.version,
            i.task.value,
            f"{i.input_width}×{i.input_height}",
            ", ".join(i.class_names),
            i.execution_provider,
            f"{i.default_confidence_threshold:g}",
            f"{i.default_iou_threshold:g}",
            str(i.default_max_detections),
            "on" if i.default_agnostic_nms else "off",
            *((state,) if all_models else ()),
        )
    table_console().print(table)
