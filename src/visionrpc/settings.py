"""The server's one settings object: every knob is read from ``VISIONRPC_<NAME>``; flags override.

Nested groups use a double underscore, e.g. ``VISIONRPC_BATCHING__MAX_BATCH_SIZE=8``. Choices are
``Literal`` types, so a typo is a settings error at start-up, before any port is bound or model
loaded. The client has its own, smaller settings (``visionrpc.client.ClientSettings``).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024

Device = Literal["auto", "cpu", "cuda", "tensorrt"]
GraphOptimization = Literal["disable", "basic", "extended", "all"]
ExecutionMode = Literal["sequential", "parallel"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


class BatchingSettings(BaseModel):
    """Server-wide batching defaults (Triton's names); a model's model.yaml may override them."""

    max_batch_size: int = Field(
        0,
        ge=0,
        description="Largest batch handed to ONNX Runtime; 0 = auto: 8 on GPU or with one "
        "instance, 1 on CPU with one instance per core (there batching trades p99 latency for "
        "throughput; see the README's performance section).",
    )
    max_queue_delay_us: int = Field(
        0, ge=0, description="How long a batch may wait for more requests; 0 = never wait."
    )
    max_queue_size: int = Field(
        256, ge=1, description="Queued requests per model before RESOURCE_EXHAUSTED is returned."
    )


class RuntimeSettings(BaseModel):
    """ONNX Runtime session options."""

    device: Device = Field(
        "auto", description="auto (CUDA/TensorRT when present, else CPU), cpu, cuda or tensorrt."
    )
    instances: int = Field(
        0,
        ge=0,
        description="Batches of one model run at once (Triton's instance count); 0 = one per CPU "
        "core on CPU, each ORT call single-threaded, and 1 on GPU.",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="Threads in one operator; 0 = the CPU cores shared out among the instances "
        "(ORT's default on GPU).",
    )
    lone_request_all_cores: bool = Field(
        True,
        description="On CPU with several single-threaded instances, a request that finds every "
        "instance idle runs on a second session using all cores, whose threads spin between "
        "operators only during the call.",
    )
    inter_op_threads: int = Field(0, ge=0, description="Threads across operators; 0 = ORT default.")
    graph_optimization: GraphOptimization = Field(
        "all", description="disable, basic, extended or all (ORT graph optimisation level)."
    )
    execution_mode: ExecutionMode = Field("sequential", description="sequential or parallel.")
    allow_spinning: bool = Field(
        False,
        description="Let ORT threads busy-wait between operators (can help a dedicated box; "
        "hurts when the same cores decode images and serve gRPC).",
    )
    decode_workers: int = Field(
        2, ge=1, description="Threads that decode and letterbox images (OpenCV releases the GIL)."
    )

    _lower_choices = field_validator(
        "device", "graph_optimization", "execution_mode", mode="before"
    )(_lower)


class LimitsSettings(BaseModel):
    """Bounds on the work one request may cause, so no single call can hold the server for long
    or grow its memory without bound (env ``VISIONRPC_LIMITS__<NAME>``)."""

    max_request_seconds: float = Field(
        30.0,
        ge=0,
        description="Server-side time budget of one image, counted from its arrival; a request "
        "still running when it passes stops at the next stage (decode, model, post-processing, "
        "masks) with RESOURCE_EXHAUSTED. The caller's own deadline, when shorter, stops it "
        "with DEADLINE_EXCEEDED. 0 = no server budget.",
    )
    max_mask_detections: int = Field(
        100,
        ge=1,
        description="Most detections a request with return_masks may ask for (max_detections); "
        "more is refused with RESOURCE_EXHAUSTED before any decoding.",
    )
    max_mask_pixels: int = Field(
        50_000_000,
        ge=1,
        description="Most mask pixels (the sum of the detections' box areas, in image pixels) "
        "one request may have returned; more is refused with RESOURCE_EXHAUSTED before any mask "
        "is built. Mask areas of requests without return_masks are estimated on a coarser grid "
        "instead of refused.",
    )
    max_tiles: int = Field(
        512,
        ge=1,
        description="Most tiles a tiled request may cut its frame into (the thumbnail pass not "
        "counted); more is refused with INVALID_ARGUMENT before the model runs. A 20 MP frame "
        "makes about 330 tiles of 320 px with 20% overlap.",
    )
    trim_memory_above_bytes: int = Field(
        64 * MiB,
        ge=0,
        description="After a request whose decoded image is larger than this, hand freed memory "
        "back to the operating system (glibc malloc_trim; Linux only). 0 = never.",
    )


class TlsSettings(BaseModel):
    """TLS on the listening port; the files are re-read when they change (no restart)."""

    cert_file: Path | None = Field(
        None,
        description="PEM certificate chain the server presents; with key_file it turns TLS on. "
        "Rewriting the file (and the key) serves the new certificate to new connections.",
    )
    key_file: Path | None = Field(None, description="PEM private key of cert_file (unencrypted).")
    client_ca_file: Path | None = Field(
        None,
        description="PEM CA certificates; set = every client must present a certificate they "
        "signed (mutual TLS).",
    )


HEALTH_AND_REFLECTION: tuple[str, ...] = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)


class AuthSettings(BaseModel):
    """Bearer tokens with scopes; no tokens configured = every call allowed."""

    tokens_file: Path | None = Field(
        None,
        description="YAML list of tokens: name (the caller's identity), sha256 (hex digest of the "
        "token; or token: the token itself) and scopes (inference, models, core).",
    )
    tokens: SecretStr | None = Field(
        None,
        description="The same list as tokens_file, inline (YAML or JSON), for a secret "
        "environment variable; used together with tokens_file.",
    )
    open_services: list[str] = Field(
        list(HEALTH_AND_REFLECTION),
        description="Services callable without a token (full proto names), so probes and tools "
        "work; [] puts every service behind a token.",
    )


class DrainSettings(BaseModel):
    """What an open InferStream does after SIGTERM (grace_period_s bounds the whole drain)."""

    stream_frame_wait_ms: float = Field(
        50,
        ge=0,
        description="After SIGTERM an InferStream keeps reading the frames its client already "
        "sent while the next one arrives within this many milliseconds; then it stops reading, "
        "answers every frame it read and ends with UNAVAILABLE (reconnect elsewhere).",
    )
    stream_read_s: float = Field(
        2.0,
        ge=0,
        description="Longest an InferStream keeps reading after SIGTERM (a client that never "
        "pauses); the visionrpc client reports the frames it sent that were not answered.",
    )


class FairnessSettings(BaseModel):
    """Per-client limits, so one client cannot starve the others or grow the server's memory.

    A client is one connection (the lead may key them by authenticated identity instead).
    """

    max_in_flight_per_client: int = Field(
        64,
        ge=1,
        description="Infer calls and InferStream frames one client may have in work at once, "
        "across all its streams; a stream waits for a slot before reading its next frame, an "
        "Infer call beyond it gets RESOURCE_EXHAUSTED.",
    )
    max_queue_per_client: int = Field(
        64,
        ge=1,
        description="Places in one model's queue (batching.max_queue_size) one client may hold; "
        "its excess gets RESOURCE_EXHAUSTED while other clients are still admitted.",
    )
    decodes_per_client: int = Field(
        4,
        ge=1,
        description="Images of one client being decoded at once, so other clients' images do not "
        "wait behind all of its backlog in the decode pool.",
    )
    http2_bdp_probe: bool = Field(
        False,
        description="Let gRPC grow each connection's HTTP/2 receive windows by probing its "
        "bandwidth-delay product. Off, what the server buffers for a stream whose frames wait "
        "(fairness.max_in_flight_per_client) stays small; turn on for large images over "
        "high-latency links.",
    )
    chat_post_wait_s: float = Field(
        2.0,
        ge=0,
        description="How long a Chat participant's buffer (chat_buffer_size) may stay full "
        "without it taking a message; then it is dropped with RESOURCE_EXHAUSTED. Until then "
        "posts wait for it, so posters go at their readers' pace.",
    )


class MetricsSettings(BaseModel):
    """Prometheus metrics on an HTTP port of their own (env ``VISIONRPC_METRICS__<NAME>``)."""

    port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port serving Prometheus metrics at /metrics; unset = no metrics (nothing "
        "listens, nothing is counted); 0 picks a free one.",
    )
    host: str = Field(
        "127.0.0.1",
        description="Address the metrics port listens on; 0.0.0.0 for all interfaces (to let a "
        "Prometheus on another machine scrape it).",
    )


class ConnectionSettings(BaseModel):
    """How long client connections live and how dead ones are found, so that load spreads over
    replicas (env ``VISIONRPC_CONNECTIONS__<NAME>``). HTTP/2 keeps one connection per client; a
    maximum age makes clients reconnect and re-resolve, so new replicas get their share."""

    max_connection_age_ms: int | None = Field(
        None,
        ge=1,
        description="Close a connection this long after it opened (gRPC sends GOAWAY: calls on it "
        "finish, new ones go to a new connection, after the client re-resolves the target). "
        "None = connections live for ever (one replica keeps its clients).",
    )
    max_connection_age_grace_ms: int | None = Field(
        None,
        ge=0,
        description="After max_connection_age_ms, how long calls still open on the connection may "
        "run before it is closed; None = until they end. Long InferStream and Chat streams are "
        "ended with UNAVAILABLE when it passes.",
    )
    max_connection_idle_ms: int | None = Field(
        None,
        ge=1,
        description="Close a connection with no calls for this long; None = never.",
    )
    keepalive_time_ms: int | None = Field(
        None,
        ge=1,
        description="Ping each client after this long without activity, to find connections "
        "whose peer vanished (a node lost, a NAT entry expired); None = gRPC's default (2 hours).",
    )
    keepalive_timeout_ms: int | None = Field(
        None,
        ge=1,
        description="Close the connection when a keepalive ping is not answered within this; "
        "None = gRPC's default (20 s).",
    )
    keepalive_permit_without_calls: bool = Field(
        False,
        description="Allow clients to send keepalive pings on connections with no calls (and "
        "ping such connections too); off, a client that does so is disconnected.",
    )
    min_recv_ping_interval_ms: int | None = Field(
        None,
        ge=0,
        description="Shortest interval between a client's pings without data that the server "
        "accepts (more often is a 'ping strike' and the connection is closed with GOAWAY "
        "too_many_pings); set it at or below the clients' keepalive time. None = gRPC's "
        "default (5 minutes).",
    )


class ModelControlSettings(BaseModel):
    """Loading, reloading and unloading models while the server runs."""

    poll_interval_s: float | None = Field(
        None,
        gt=0,
        description="Watch models_dir: every this many seconds, load new models, reload changed "
        "ones (once their files stopped changing for one interval) and unload removed ones. "
        "Unset = no watch; models change only through LoadModel/UnloadModel/ReloadModel.",
    )
    retire_timeout_s: float = Field(
        60.0,
        gt=0,
        description="After a reload or unload, how long the old version may take to finish the "
        "requests it holds; requests still running then fail with UNAVAILABLE.",
    )


class Settings(BaseSettings):
    """Server configuration."""

    model_config = SettingsConfigDict(
        env_prefix="VISIONRPC_", env_nested_delimiter="__", extra="ignore"
    )

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 for all interfaces).")
    port: int = Field(50051, ge=0, le=65535, description="Port to listen on; 0 picks a free one.")
    max_receive_message_bytes: int = Field(
        64 * MiB,
        ge=1024,
        description="Largest request; larger ones get RESOURCE_EXHAUSTED.",
    )
    max_send_message_bytes: int = Field(64 * MiB, ge=1024, description="Largest response message.")
    max_stream_count: int = Field(
        100_000, ge=1, description="Largest StreamNumbers count; more is INVALID_ARGUMENT."
    )
    chat_buffer_size: int = Field(
        256, ge=1, description="Messages buffered per chat participant before it is dropped."
    )
    grace_period_s: float = Field(
        10.0, ge=0, description="How long in-flight calls may run after SIGTERM/SIGINT."
    )
    max_concurrent_streams: int = Field(
        100,
        ge=0,
        description="HTTP/2 streams (calls) open at once per connection; calls beyond it are "
        "refused with UNAVAILABLE (retryable). 0 = no limit (gRPC's default).",
    )
    log_level: LogLevel = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: LogFormat = Field(LogFormat.TEXT, description="text or json logs.")
    access_log: bool = Field(
        False,
        description="One structured log line per call (method, code, duration, peer). Off by "
        "default: at thousands of calls per second it costs a measurable share of throughput.",
    )

    models_dir: Path | None = Field(
        None, description="Model repository directory; unset = the models shipped in the package."
    )
    default_model: str = Field(
        "",
        description="Model used when a request names none; empty = the repository's own choice "
        "(its repository.yaml, or its only model).",
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="Larger images are refused (decompression bombs)."
    )
    max_image_side: int = Field(
        16384, ge=1, description="Largest width or height accepted, encoded or raw."
    )
    reduced_decode: bool = Field(
        True, description="Decode large JPEGs at 1/2, 1/4 or 1/8 scale (DCT scaling)."
    )
    stream_window: int = Field(
        4, ge=1, description="InferStream frames in flight per stream before reading pauses."
    )
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    drain: DrainSettings = Field(default_factory=DrainSettings)
    fairness: FairnessSettings = Field(default_factory=FairnessSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    connections: ConnectionSettings = Field(default_factory=ConnectionSettings)
    model_control: ModelControlSettings = Field(default_factory=ModelControlSettings)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value
