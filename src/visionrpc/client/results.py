"""Typed results of the CoreServices and health calls, and one InferStream frame's outcome."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2

from visionrpc.client.errors import FieldViolation, StatusDetails
from visionrpc.types import InferenceResult
from visionrpc.v1 import core_pb2, inference_pb2
from visionrpc.wire.codes import code_name
from visionrpc.wire.converters import InferResponseConverter


def _datetime(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class PingResult:
    message: str
    server_time: datetime
    server_version: str
    instance_id: str

    @classmethod
    def from_proto(cls, reply: core_pb2.PingReply) -> PingResult:
        return cls(
            reply.message, _datetime(reply.server_time), reply.server_version, reply.instance_id
        )


@dataclass(frozen=True, slots=True)
class NumberResult:
    index: int
    value: int

    @classmethod
    def from_proto(cls, reply: core_pb2.NumberReply) -> NumberResult:
        return cls(reply.index, reply.value)


@dataclass(frozen=True, slots=True)
class UploadResult:
    count: int
    sum: int
    min: int
    max: int
    mean: float

    @classmethod
    def from_proto(cls, reply: core_pb2.UploadSummary) -> UploadResult:
        return cls(reply.count, reply.sum, reply.min, reply.max, reply.mean)


@dataclass(frozen=True, slots=True)
class ChatMessageResult:
    room: str
    sender: str
    text: str
    seq: int
    sent_at: datetime

    @classmethod
    def from_proto(cls, message: core_pb2.ChatMessage) -> ChatMessageResult:
        return cls(
            message.room, message.sender, message.text, message.seq, _datetime(message.sent_at)
        )


@dataclass(frozen=True, slots=True)
class HealthResult:
    service: str
    status: str  # SERVING, NOT_SERVING, SERVICE_UNKNOWN or UNKNOWN

    @property
    def serving(self) -> bool:
        return self.status == "SERVING"

    @classmethod
    def from_proto(cls, service: str, reply: health_pb2.HealthCheckResponse) -> HealthResult:
        return cls(service, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


@dataclass(frozen=True)
class StreamResult:
    """One frame's outcome in ``infer_stream``: a result, or the error of that frame alone."""

    request_id: str
    result: InferenceResult | None
    error_code: str = ""  # gRPC status code name, e.g. "INVALID_ARGUMENT"
    error_message: str = ""
    field_violations: tuple[FieldViolation, ...] = ()
    """Request fields the server refused in this frame, and why (the error's BadRequest)."""
    retry_after: float | None = None
    """Seconds the server asks to wait before sending this frame again (the error's RetryInfo)."""

    @property
    def ok(self) -> bool:
        return self.result is not None

    @classmethod
    def from_proto(cls, response: inference_pb2.InferResponse) -> StreamResult:
        if response.HasField("error") and response.error.code != 0:
            details = StatusDetails.from_status(response.error)
            return cls(
                response.request_id,
                None,
                code_name(response.error.code),
                response.error.message,
                details.field_violations,
                details.retry_after,
            )
        return cls(response.request_id, InferResponseConverter.to_types(response))
