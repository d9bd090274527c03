"""``visionrpc serve``: run the server until SIGTERM/SIGINT.

Each flag's default, help and choices come from its ``Settings`` field, and a flag counts only when
it is on the command line, so the order is: default < ``VISIONRPC_*`` environment < flag.
A start-up failure prints one line saying what to change and exits 1; ``--log-level debug`` adds
the traceback.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

from visionrpc.errors import VisionRPCError
from visionrpc.settings import LogFormat, LogLevel, Settings

SERVER_EXTRA_MODULES = frozenset(
    {"onnxruntime", "grpc_reflection", "yaml", "cv2", "pycocotools", "prometheus_client"}
)
"""Top-level modules that only the ``server`` extra installs."""
SERVER_EXTRA_HINT = 'pip install "visionrpc[server]"'

FLAG_FIELDS: dict[str, str] = {
    "host": "host",
    "port": "port",
    "models": "models_dir",
    "default_model": "default_model",
    "log_level": "log_level",
    "log_format": "log_format",
    "grace": "grace_period_s",
    "access_log": "access_log",
    "tls_cert": "tls.cert_file",
    "tls_key": "tls.key_file",
    "tls_client_ca": "tls.client_ca_file",
    "metrics_port": "metrics.port",
    "metrics_host": "metrics.host",
    "watch_models": "model_control.poll_interval_s",
}
"""serve()'s parameters and the Settings fields they set (``group.field`` for nested ones)."""
_FIELDS = Settings.model_fields
_DEFAULTS: dict[str, Any] = {name: field.default for name, field in _FIELDS.items()}
_ENV_PREFIX = "VISIONRPC_"


def _env_name(*path: str | int) -> str:
    return _ENV_PREFIX + "__".join(str(part).upper() for part in path)


def _field_info(field: str) -> Any:
    """The pydantic FieldInfo of ``field`` or ``group.field``."""
    group, _, name = field.rpartition(".")
    if not group:
        return _FIELDS[field]
    model = _FIELDS[group].annotation
    return model.model_fields[name]  # type: ignore[union-attr]


def _option(field: str, *decls: str, **kwargs: Any) -> Any:
    """A typer option described by the Settings field ``field`` (and naming its env variable)."""
    env = _env_name(*field.split("."))
    return typer.Option(*decls, help=f"{_field_info(field).description} (env {env})", **kwargs)


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"tls.cert_file": x}`` as ``{"tls": {"cert_file": x}}``, for Settings(**...); nested
    groups merge with their environment variables."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        group, _, name = key.rpartition(".")
        if group:
            out.setdefault(group, {})[name] = value
        else:
            out[key] = value
    return out


def serve(
    ctx: typer.Context,
    host: Annotated[str, _option("host")] = _DEFAULTS["host"],
    port: Annotated[int, _option("port")] = _DEFAULTS["port"],
    models: Annotated[Path | None, _option("models_dir", "--models")] = _DEFAULTS["models_dir"],
    default_model: Annotated[str, _option("default_model", show_default=False)] = _DEFAULTS[
        "default_model"
    ],
    log_level: Annotated[LogLevel, _option("log_level", case_sensitive=False)] = _DEFAULTS[
        "log_level"
    ],
    log_format: Annotated[LogFormat, _option("log_format")] = _DEFAULTS["log_format"],
    grace: Annotated[float, _option("grace_period_s", "--grace")] = _DEFAULTS["grace_period_s"],
    access_log: Annotated[bool, _option("access_log", "--access-log/--no-access-log")] = _DEFAULTS[
        "access_log"
    ],
    tls_cert: Annotated[Path | None, _option("tls.cert_file", "--tls-cert")] = None,
    tls_key: Annotated[Path | None, _option("tls.key_file", "--tls-key")] = None,
    tls_client_ca: Annotated[Path | None, _option("tls.client_ca_file", "--tls-client-ca")] = None,
    metrics_port: Annotated[int | None, _option("metrics.port", "--metrics-port")] = None,
    metrics_host: Annotated[str, _option("metrics.host", "--metrics-host")] = "127.0.0.1",
    watch_models: Annotated[
        float | None,
        _option("model_control.poll_interval_s", "--watch-models", metavar="SECONDS"),
    ] = None,
) -> None:
    """Run the server until SIGTERM/SIGINT (flags override VISIONRPC_* environment variables)."""
    given: dict[str, Any] = {
        FLAG_FIELDS[name]: value
        for name, value in ctx.params.items()
        if _on_command_line(ctx.get_parameter_source(name))
    }
    try:
        settings = Settings(**_nested(given))
    except ValidationError as exc:
        _fail("\n".join(settings_problems(exc, given)), exc, debug=_debug_requested(given))
    debug = settings.log_level == "DEBUG"

    from visionrpc.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    try:
        from visionrpc.server.app import default_services, run

        run(settings, default_services(settings))
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in SERVER_EXTRA_MODULES:
            raise
        _fail(
            f"visionrpc serve needs the server extra ({missing} is not installed): "
            + SERVER_EXTRA_HINT,
            exc,
            debug,
        )
    except VisionRPCError as exc:
        _fail(str(exc), exc, debug)


def _on_command_line(source: Any) -> bool:
    """Whether click took the value from the command line (not a default)."""
    return getattr(source, "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")


def _debug_requested(given: dict[str, Any]) -> bool:
    """``--log-level debug`` or VISIONRPC_LOG_LEVEL=debug, read without valid Settings."""
    level = given.get("log_level") or os.environ.get(_env_name("log_level"), "")
    return str(level).strip().upper() == "DEBUG"


def settings_problems(exc: ValidationError, given: dict[str, Any]) -> list[str]:
    """One line per invalid setting, named as the user set it: ``--port`` or ``VISIONRPC_PORT``."""
    flags = {field: name for name, field in FLAG_FIELDS.items()}
    lines = []
    for error in exc.errors():
        path = error["loc"]
        field = ".".join(str(part) for part in path)
        if field not in given:
            field = str(path[0]) if path else ""
        name = "--" + flags[field].replace("_", "-") if field in given else _env_name(*path)
        lines.append(f"invalid setting {name}={error['input']!r}: {error['msg']}")
    return lines


def _fail(message: str, exc: BaseException, debug: bool) -> NoReturn:
    if debug:
        traceback.print_exception(exc)
    for line in message.splitlines():
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(1)
