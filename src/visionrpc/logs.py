"""Logging set-up in one place, so the server, the CLI and tests format records the same way.

Structured values travel in ``extra={"fields": {...}}``: the text format shows them as ``key=value``
pairs after the message, the JSON format merges them into the top-level object, so log pipelines
can index ``grpc_method``, ``grpc_code`` and friends without parsing text.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from visionrpc.settings import LogFormat

FIELDS_ATTR = "fields"
"""Name of the ``extra`` key that carries structured fields."""

_HANDLER_MARK = "_visionrpc_handler"


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    value = getattr(record, FIELDS_ATTR, None)
    return value if isinstance(value, Mapping) else {}


def _format_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=')) else text


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...`` – readable and still grep-able."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = " ".join(f"{k}={_format_value(v)}" for k, v in _fields(record).items())
        if not pairs:
            return line
        head, sep, tail = line.partition("\n")  # keep tracebacks after the fields
        return f"{head} {pairs}{sep}{tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the structured fields, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(_fields(record))
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def make_formatter(fmt: LogFormat | str) -> logging.Formatter:
    """The formatter for a ``log_format`` setting value."""
    return JsonFormatter() if LogFormat(fmt) is LogFormat.JSON else TextFormatter()


def configure_logging(
    level: str = "INFO", fmt: LogFormat | str = LogFormat.TEXT, stream: TextIO | None = None
) -> None:
    """Install one handler on the root logger (idempotent: a second call replaces it)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(make_formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level.upper())
