"""Log formatting: structured fields as key=value (text) or top-level keys (JSON)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from visionrpc.logs import configure_logging


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:], root.level = handlers, level


def _emit(fmt: str) -> str:
    stream = io.StringIO()
    configure_logging("DEBUG", fmt, stream=stream)
    configure_logging("DEBUG", fmt, stream=stream)  # idempotent: still one line per record
    logging.getLogger("visionrpc.access").info(
        "/svc/M OK", extra={"fields": {"grpc_code": "OK", "peer": "ipv4:127.0.0.1:1", "ms": 1.5}}
    )
    return stream.getvalue()


def test_json_lines(restore_root_logger: None) -> None:
    lines = _emit("json").splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["message"] == "/svc/M OK" and record["logger"] == "visionrpc.access"
    assert (record["grpc_code"], record["peer"], record["ms"]) == ("OK", "ipv4:127.0.0.1:1", 1.5)
    assert record["level"] == "INFO" and record["ts"].endswith("+00:00")


def test_text_lines(restore_root_logger: None) -> None:
    lines = _emit("text").splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("/svc/M OK grpc_code=OK peer=ipv4:127.0.0.1:1 ms=1.5")
    assert "INFO" in lines[0]
