"""``visionrpc`` entry point: a registry of commands; implementations live in sibling modules.

Add a command with one line, e.g. ``app.command("infer")(infer.infer)`` or
``app.add_typer(infer.models_app, name="models")``.
"""

from __future__ import annotations

import typer

from visionrpc.cli import bench, core, infer

app = typer.Typer(
    name="visionrpc",
    help="gRPC server and client for computer-vision inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

app.command("serve")(core.serve)
app.command("ping")(core.ping)
app.add_typer(core.numbers_app, name="numbers")
app.command("chat")(core.chat)
app.command("health")(core.health)
app.command("demo")(core.demo)
infer.register(app)
bench.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
