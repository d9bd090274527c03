"""Logging set-up in one place, so the server, the CLI and tests format records the same way.

Structured values travel in ``extra={"fields": {...}}``: the text format shows them as ``key=value``
pairs after the message, the JSON format merges them into the top-level object, so log pipelines
can index ``grpc_method``, ``grpc_code`` and friends without parsing text.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
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


LINES_PER_SECOND = 5
"""Default for :class:`ThrottledLog`: lines per second and kind before the rest are counted."""


class ThrottledLog:
    """Log lines caused by clients, at most ``per_second`` per kind and second.

    A client that sends a thousand bad messages must not write a thousand lines (or tracebacks):
    past the limit, lines of that kind are only counted, and the next line let through is preceded
    by one ``suppressed N similar messages`` line. The kind is chosen by the caller (a method name,
    an error class), so one noisy client does not hide a different problem. Thread-safe.
    """

    def __init__(
        self,
        logger: logging.Logger,
        per_second: int = LINES_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.per_second = per_second
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int, int]] = {}  # kind → (start, lines, suppressed)

    def _admit(self, kind: str) -> tuple[bool, int, float]:
        """(log it?, suppressed count to report first, seconds that count covers)."""
        now = self._clock()
        with self._lock:
            start, lines, suppressed = self._windows.get(kind, (now, 0, 0))
            if now - start >= 1.0:
                if len(self._windows) > 1000:  # many kinds: forget the old windows
                    self._windows.clear()
                self._windows[kind] = (now, 1, 0)
                return True, suppressed, now - start
            if lines < self.per_second:
                self._windows[kind] = (start, lines + 1, suppressed)
                return True, 0, 0.0
            self._windows[kind] = (start, lines, suppressed + 1)
            return False, 0, 0.0

    def log(
        self,
        level: int,
        kind: str,
        msg: str,
        *args: object,
        exc_info: BaseException | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> bool:
        """Log ``msg % args`` (with structured ``fields``) unless this kind is over its rate;
        True when it was logged."""
        if not self.logger.isEnabledFor(level):
            return False
        allowed, suppressed, span = self._admit(kind)
        if suppressed:
            self.logger.log(
                level,
                "suppressed %d similar messages (%s) in the last %.1fs",
                suppressed,
                kind,
                span,
                extra={"fields": {"suppressed": suppressed, "kind": kind}},
            )
        if allowed:
            extra = {FIELDS_ATTR: fields} if fields else None
            self.logger.log(level, msg, *args, exc_info=exc_info, extra=extra)
        return allowed

    def warning(self, kind: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, kind, msg, *args)

    def error(
        self,
        kind: str,
        msg: str,
        *args: object,
        exc_info: BaseException | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> bool:
        return self.log(logging.ERROR, kind, msg, *args, exc_info=exc_info, fields=fields)
