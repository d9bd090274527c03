"""``visionrpc`` entry point: a registry of commands; implementations live in sibling modules.

Add a command with one line, e.g. ``app.command("infer")(infer.infer)``. Server-side commands
(serve, eval, demo --local) import the server only when they run, so the client commands work
from a client-only install.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from typer.exceptions import TyperException

from visionrpc import __version__
from visionrpc.cli import bench, calls, demo, evaluate, infer, models, serve

app = typer.Typer(
    name="visionrpc",
    help="gRPC server and client for computer-vision inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"visionrpc {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """gRPC server and client for computer-vision inference."""


app.command("serve")(serve.serve)
app.command("ping")(calls.ping)
app.add_typer(calls.numbers_app, name="numbers")
app.command("chat")(calls.chat)
app.command("health")(calls.health)
app.command("demo")(demo.demo)
app.command("infer")(infer.infer)
app.command("infer-stream")(infer.infer_stream)
app.add_typer(models.models_app, name="models")
app.command("eval")(evaluate.evaluate)
app.command("bench")(bench.bench)


def main() -> None:
    """Run the CLI; a usage error is two plain lines (what is wrong, where the help is) instead of
    click's framed block."""
    try:
        # prog_name: the same name in usage lines for `python -m visionrpc`
        code = app(prog_name="visionrpc", standalone_mode=False)
    except TyperException as exc:  # usage errors (bad option, missing argument) and the like
        typer.echo(f"error: {exc.format_message()}", err=True)
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            typer.echo(f"Try '{ctx.command_path} --help' for help.", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
