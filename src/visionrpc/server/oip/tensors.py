"""What every view of the protocol shares: BYTES framing and typed request parameters."""

from __future__ import annotations

import struct
from collections.abc import Mapping

from visionrpc.errors import InvalidInputError
from visionrpc.v1 import grpc_service_pb2 as oip

ParameterValue = bool | int | float | str


def unframe(raw: bytes, tensor: str) -> list[bytes]:
    """Triton's BYTES framing: each element a 4-byte little-endian length, then its bytes."""
    elements: list[bytes] = []
    at = 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidInputError(
                f"input {tensor!r}: raw_input_contents ends in the middle of element "
                f"{len(elements)}'s 4-byte length prefix (at byte {at} of {len(raw)})",
                field="raw_input_contents",
            )
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise InvalidInputError(
                f"input {tensor!r}: element {len(elements)} of raw_input_contents announces "
                f"{size} bytes but only {len(raw) - at} follow; each element is a 4-byte "
                "little-endian length followed by that many bytes",
                field="raw_input_contents",
            )
        elements.append(raw[at : at + size])
        at += size
    return elements


def frame(elements: list[bytes]) -> bytes:
    """The inverse of :func:`unframe`: how a BYTES output travels in raw_output_contents."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


Parameters = Mapping[str, oip.InferParameter]


def parameter(parameters: Parameters, key: str) -> ParameterValue | None:
    """The value of one request parameter, whichever of the protocol's types it was sent as."""
    if key not in parameters:
        return None
    value = parameters[key]
    which = value.WhichOneof("parameter_choice")
    return None if which is None else getattr(value, which)


def number(parameters: Parameters, key: str) -> float | None:
    """A numeric parameter (double_param, int64_param or uint64_param); None when absent."""
    value = parameter(parameters, key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(
            f"parameter {key!r} must be a number (double_param or int64_param)", field="parameters"
        )
    return float(value)
