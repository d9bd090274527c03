"""The visionrpc client library: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

It depends on gRPC, protobuf and numpy only, never on the model runtime or the server, so an
inspection station installs ``pip install visionrpc`` without ONNX Runtime or OpenCV. Both clients
match the server's 64 MiB message limits and let gRPC retry UNAVAILABLE through the service config
(a restarting or still-loading server is retried with backoff, no hand-written loop).
"""

from visionrpc.client.aio import AsyncClient
from visionrpc.client.base import USE_CLIENT_DEFAULT, Timeout, channel_options, service_config
from visionrpc.client.errors import (
    CallError,
    FieldViolation,
    MessageSizeError,
    StreamInterruptedError,
)
from visionrpc.client.requests import ImageLike, infer_request
from visionrpc.client.results import (
    ChatMessageResult,
    HealthResult,
    NumberResult,
    PingResult,
    StreamResult,
    UploadResult,
)
from visionrpc.client.settings import ClientSettings
from visionrpc.client.sync import Client
from visionrpc.tls import TlsFileError
from visionrpc.types import (
    BoxXYXY,
    Classification,
    DefectSummary,
    Detection,
    EncodedMask,
    InferenceResult,
    InspectionVerdict,
    Keypoint,
    MaskFormat,
    Measurement,
    Metric,
    ModelDescription,
    RotatedBox,
    Rule,
    RuleHit,
    RuleSet,
    Task,
    Timings,
    Verdict,
)

__all__ = [
    "USE_CLIENT_DEFAULT",
    "AsyncClient",
    "BoxXYXY",
    "CallError",
    "ChatMessageResult",
    "Classification",
    "Client",
    "ClientSettings",
    "DefectSummary",
    "Detection",
    "EncodedMask",
    "FieldViolation",
    "HealthResult",
    "ImageLike",
    "InferenceResult",
    "InspectionVerdict",
    "Keypoint",
    "MaskFormat",
    "Measurement",
    "MessageSizeError",
    "Metric",
    "ModelDescription",
    "NumberResult",
    "PingResult",
    "RotatedBox",
    "Rule",
    "RuleHit",
    "RuleSet",
    "StreamInterruptedError",
    "StreamResult",
    "Task",
    "Timeout",
    "Timings",
    "TlsFileError",
    "UploadResult",
    "Verdict",
    "channel_options",
    "infer_request",
    "service_config",
]
