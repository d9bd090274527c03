"""``visionrpc serve``: run the server until SIGTERM/SIGINT."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from visionrpc.settings import LogFormat, Settings


def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port; 0 picks a free one.")] = None,
    models: Annotated[Path | None, typer.Option(help="Model repository directory.")] = None,
    default_model: Annotated[
        str | None, typer.Option(help="Model used when none is named.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
    log_format: Annotated[LogFormat | None, typer.Option(help="text or json.")] = None,
    grace: Annotated[
        float | None, typer.Option(help="Seconds in-flight calls get on SIGTERM/SIGINT.")
    ] = None,
    access_log: Annotated[
        bool | None, typer.Option("--access-log/--no-access-log", help="One log line per call.")
    ] = None,
) -> None:
    """Run the server until SIGTERM/SIGINT (flags override VISIONRPC_* environment variables)."""
    from visionrpc.logs import configure_logging
    from visionrpc.server.app import default_services, run

    flags: dict[str, Any] = {
        "host": host,
        "port": port,
        "models_dir": models,
        "default_model": default_model,
        "log_level": log_level,
        "log_format": log_format,
        "grace_period_s": grace,
        "access_log": access_log,
    }
    settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    configure_logging(settings.log_level, settings.log_format)
    run(settings, default_services(settings))
