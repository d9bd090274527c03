"""gRPC status codes by number: ``google.rpc.Status.code`` and some grpc APIs carry the integer."""

from __future__ import annotations

import grpc

_BY_VALUE: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def status_code(value: int) -> grpc.StatusCode | None:
    """The StatusCode whose number is ``value`` (None for numbers gRPC does not define)."""
    return _BY_VALUE.get(value)


def code_name(value: int | grpc.StatusCode) -> str:
    """``"INVALID_ARGUMENT"`` for 3 (or for StatusCode.INVALID_ARGUMENT); the number as text when
    gRPC defines no such code."""
    if isinstance(value, grpc.StatusCode):
        return value.name
    code = _BY_VALUE.get(value)
    return code.name if code is not None else str(value)


def code_value(code: grpc.StatusCode) -> int:
    """The number of a StatusCode, as ``google.rpc.Status.code`` wants it."""
    number: int = code.value[0]
    return number
