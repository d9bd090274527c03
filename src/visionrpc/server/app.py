"""The grpc.aio server: built in one place, with health, reflection, interceptors and draining.

Adding a service (e.g. InferenceMethods) means writing a servicer that also satisfies ``Service``
and passing an instance to ``VisionServer``/``serve`` – usually by returning it from
``default_services``. The server then:

1. builds the grpc.aio server with the message-size options from Settings and the interceptors,
2. calls every service's ``add_to_server`` and registers health + reflection (v1 and v1alpha)
   for all of them,
3. starts listening with health NOT_SERVING (the readiness gate answers UNAVAILABLE to calls),
   and serves Prometheus metrics when ``settings.metrics.port`` is set (``server.metrics``);
   a port it cannot listen on is a ``StartupError`` that says what to change,
4. awaits every service's ``start()`` (model loading) in order, then flips health to SERVING;
   if one fails, what was started is stopped and the error raised, for the caller to report once,
5. on ``stop(grace)`` (SIGTERM) it drains (see ``server.drain``): health NOT_SERVING, new
   application calls refused with UNAVAILABLE "server is draining", every service with a
   ``drain()`` tells its open streams to finish; once the in-flight calls are done (or ``grace``
   seconds have passed) the gRPC server stops, then every service's ``stop()`` runs in reverse
   order. Health and reflection answer until the gRPC server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visionrpc.errors import VisionRPCError
from visionrpc.server import reflection
from visionrpc.server.auth import AuthConfigError, Authenticator
from visionrpc.server.decoding import DecodeGuard
from visionrpc.server.drain import Drains
from visionrpc.server.health import SERVICE_NAME as HEALTH_SERVICE_NAME
from visionrpc.server.health import HealthServicer
from visionrpc.server.interceptors import CallInterceptor
from visionrpc.server.reference.chat import CHAT_LIMIT
from visionrpc.server.reference.core_services import CoreServicesServicer
from visionrpc.server.tls import server_credentials
from visionrpc.server.tracing import Traced, TracingConfigError
from visionrpc.server.tracing import load as load_tracing
from visionrpc.settings import Settings
from visionrpc.tls import TlsFileError

if TYPE_CHECKING:  # prometheus-client and OpenTelemetry are imported only when they are on
    from opentelemetry.trace import TracerProvider

    from visionrpc.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ALWAYS_OPEN: tuple[str, ...] = (HEALTH_SERVICE_NAME, *reflection.SERVICE_NAMES)
"""Services that answer while the server starts, so probes and tools work during model loading."""
_ALL_INTERFACES = ("0.0.0.0", "::", "[::]", "")
FLUSH_S = 1.0
"""After a drain's in-flight calls are done, the most time left for their answers to be sent."""


class StartupError(VisionRPCError):
    """The server cannot start as configured; the message says what to change."""


@runtime_checkable
class Service(Protocol):
    """What VisionServer needs from a gRPC service.

    ``name`` is the full proto service name (``visionrpc.v1.InferenceMethods``): it is the health
    service name and the name reflection lists. ``start`` runs after the server listens and before
    it reports SERVING (load models here); ``stop`` runs after in-flight calls have finished.
    A service with open streams also defines ``drain()`` (``server.drain.Drains``).
    """

    @property
    def name(self) -> str: ...

    def add_to_server(self, server: grpc.aio.Server) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class Metered(Protocol):
    """A service that counts its own metrics (beyond its calls), given the server's before
    ``start``."""

    def use_metrics(self, metrics: ServerMetrics) -> None: ...


def default_services(settings: Settings) -> list[Service]:
    """Extra services ``visionrpc serve`` runs next to CoreServices (always included)."""
    from visionrpc.server.inference_servicer import InferenceServicer
    from visionrpc.server.oip import OpenInferenceServicer

    inference = InferenceServicer(settings)
    return [inference, OpenInferenceServicer(inference)]


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    """Channel arguments of the server, all derived from Settings."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
        ("grpc.max_send_message_length", settings.max_send_message_bytes),
        # Refuse to share a fixed port with another process silently (Linux SO_REUSEPORT).
        ("grpc.so_reuseport", 0),
    ]
    if settings.max_concurrent_streams:
        options.append(("grpc.max_concurrent_streams", settings.max_concurrent_streams))
    if not settings.fairness.http2_bdp_probe:
        # Without BDP probing gRPC keeps each stream's receive window small (what it reads ahead
        # for a handler that is not reading); with it, windows grow and a client with many
        # paused streams makes the server buffer far more than the frames in work.
        options.append(("grpc.http2.bdp_probe", 0))
    options.extend(connection_options(settings))
    return options


def connection_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments for connection age and keepalive (``settings.connections``); an unset
    setting leaves gRPC's default."""
    c = settings.connections
    chosen: dict[str, int | None] = {
        "grpc.max_connection_age_ms": c.max_connection_age_ms,
        "grpc.max_connection_age_grace_ms": c.max_connection_age_grace_ms,
        "grpc.max_connection_idle_ms": c.max_connection_idle_ms,
        "grpc.keepalive_time_ms": c.keepalive_time_ms,
        "grpc.keepalive_timeout_ms": c.keepalive_timeout_ms,
        "grpc.keepalive_permit_without_calls": int(c.keepalive_permit_without_calls),
        "grpc.http2.min_recv_ping_interval_without_data_ms": c.min_recv_ping_interval_ms,
    }
    return [(name, value) for name, value in chosen.items() if value is not None]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bracketed(host: str) -> str:
    """``host`` as it goes before ``:port`` (IPv6 literals in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _bind_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on, saying what to change; None when it can.

    Asked of the OS before gRPC binds, because gRPC's own failure is a line from its C core plus an
    error that says only "Failed to bind". SO_REUSEADDR as gRPC sets it, so that connections of a
    server that just stopped (TIME_WAIT) do not count as "in use".
    """
    try:
        addresses = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        return f"cannot listen on {host!r}: {exc.strerror}; choose another address with --host"
    failures: list[OSError] = []
    for family, kind, proto, _, sockaddr in addresses:
        with socket.socket(family, kind, proto) as probe:
            if os.name == "posix":
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                failures.append(exc)
    if any(exc.errno == errno.EADDRINUSE for exc in failures):
        return (
            f"port {port} on {host} is in use; stop the other server or choose another with --port"
        )
    if not failures or len(failures) < len(addresses):
        return None  # gRPC listens on the addresses that work
    first = failures[0]
    if first.errno == errno.EACCES:
        return (
            f"not allowed to listen on port {port} of {host}; "
            "choose one above 1023 with --port (or run with that privilege)"
        )
    if first.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {host}: not an address of this machine; "
            "choose another with --host (0.0.0.0 for all interfaces)"
        )
    return f"cannot listen on {_bracketed(host)}:{port}: {first.strerror}"


class VisionServer:
    """One server process: CoreServices + the given services, with health and reflection.

    Traces go to ``tracer_provider`` when one is given (an application that set up OpenTelemetry
    itself, or a test), else where the OTEL_* variables say (``server.tracing``), if anywhere.
    """

    def __init__(
        self,
        settings: Settings,
        services: Sequence[Service] = (),
        *,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        self.core = CoreServicesServicer(settings)
        self.services: list[Service] = [self.core, *services]
        names = [s.name for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate service names: {names}")
        self.health = HealthServicer()
        self._gate = CallInterceptor(ALWAYS_OPEN, access_log=settings.access_log)
        self._server: grpc.aio.Server | None = None
        self._credentials: grpc.ServerCredentials | None = None
        self._listening = False
        self._started: list[Service] = []
        self._stopping: asyncio.Task[None] | None = None
        self._port = 0
        self._tracer_provider = tracer_provider
        self.metrics: ServerMetrics | None = None
        """The server's metrics when ``settings.metrics.port`` is set (None: nothing counted)."""
        self._metrics_port = 0
        if settings.metrics.port is not None:
            self._use_metrics()

    def _use_metrics(self) -> None:
        from visionrpc.server.metrics import ServerMetrics

        metrics = self.metrics = ServerMetrics()
        self._gate.metrics = metrics
        hub = self.core.hub
        metrics.refusal_sources.append(lambda: {CHAT_LIMIT: hub.dropped_total})
        for service in self.services:
            if isinstance(service, Metered):
                service.use_metrics(metrics)

    @property
    def metrics_port(self) -> int:
        """The metrics HTTP port (the real one when settings.metrics.port is 0); 0 when off."""
        return self._metrics_port

    @property
    def metrics_url(self) -> str:
        """``http://host:port/metrics`` a client on this machine can fetch; "" when off."""
        if not self._metrics_port:
            return ""
        host = self.settings.metrics.host
        if host in _ALL_INTERFACES:
            host = "127.0.0.1"
        return f"http://{_bracketed(host)}:{self._metrics_port}/metrics"

    def _serve_metrics(self) -> None:
        """Listen for scrapes; a port that cannot be listened on is a StartupError."""
        if self.metrics is None:
            return
        host, port = self.settings.metrics.host, self.settings.metrics.port or 0
        try:
            self._metrics_port = self.metrics.serve(host, port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                problem = (
                    f"metrics port {port} on {host} is in use; stop the other server or choose "
                    "another with --metrics-port"
                )
            else:
                problem = (
                    f"cannot serve metrics on {_bracketed(host)}:{port}: "
                    f"{exc.strerror or exc}; choose another --metrics-host or --metrics-port"
                )
            raise StartupError(problem) from None
        log.info("metrics on %s", self.metrics_url)

    @property
    def port(self) -> int:
        """The bound port (the real one when settings.port is 0); 0 before start()."""
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` a client on this machine can dial."""
        host = self.settings.host
        if host in _ALL_INTERFACES:
            host = "127.0.0.1"
        return f"{_bracketed(host)}:{self._port}"

    @property
    def listen_address(self) -> str:
        """Where the server listens, for people: ``0.0.0.0:50051 (all interfaces)``."""
        host = self.settings.host or "0.0.0.0"
        where = f"{_bracketed(host)}:{self._port}"
        return f"{where} (all interfaces)" if host in _ALL_INTERFACES else where

    @property
    def ready(self) -> bool:
        return self._gate.ready and not self._gate.draining

    @property
    def in_flight(self) -> int:
        """Application calls and streams in progress (health and reflection not counted)."""
        return self._gate.in_flight.count

    def _build(self) -> grpc.aio.Server:
        server = grpc.aio.server(interceptors=[self._gate], options=server_options(self.settings))
        # Services register through the guard: a request that does not parse is INVALID_ARGUMENT.
        guarded = cast(grpc.aio.Server, DecodeGuard(server))
        for service in self.services:
            service.add_to_server(guarded)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, guarded)
        reflection.enable_server_reflection(
            [*(s.name for s in self.services), HEALTH_SERVICE_NAME], guarded
        )
        return server

    async def _set_health(self, status: int) -> None:
        for name in ("", *(s.name for s in self.services)):
            await self.health.set(name, status)

    def _load_security(self) -> None:
        """Read the TLS files and the token list; a problem stops start-up naming the file."""
        try:
            self._credentials, mutual = server_credentials(self.settings.tls)
            self._gate.auth = Authenticator.from_settings(self.settings.auth)
        except (TlsFileError, AuthConfigError) as exc:
            raise StartupError(str(exc)) from None
        if self._credentials is not None:
            log.info("TLS on%s", " with client certificates required (mTLS)" if mutual else "")
        host = self.settings.host or "0.0.0.0"
        if is_loopback(host):
            return
        if self._credentials is None:
            log.warning(
                "listening on %s without TLS: calls and tokens cross the network in plaintext; "
                "set tls.cert_file and tls.key_file (--tls-cert, --tls-key)",
                host,
            )
        if self._gate.auth is None:
            log.warning(
                "listening on %s without tokens: anyone who reaches the port may call every "
                "method; set auth.tokens_file or auth.tokens",
                host,
            )

    def _load_tracing(self) -> None:
        """Trace calls when asked to (before the first call: handlers are wrapped once)."""
        try:
            tracing = load_tracing(self._tracer_provider)
        except TracingConfigError as exc:
            raise StartupError(str(exc)) from None
        if tracing is None:
            return
        self._gate.tracing = tracing
        for service in self.services:
            if isinstance(service, Traced):
                service.trace_with(tracing)
        log.info("tracing on")

    def _bind(self, server: grpc.aio.Server) -> int:
        host, port = self.settings.host, self.settings.port
        problem = _bind_problem(host, port)
        if problem:
            raise StartupError(problem)
        address = f"{_bracketed(host)}:{port}"
        try:
            if self._credentials is not None:
                return server.add_secure_port(address, self._credentials)
            return server.add_insecure_port(address)
        except RuntimeError:  # the OS let us bind a moment ago; gRPC's C core logged why not
            raise StartupError(
                f"cannot listen on {_bracketed(host)}:{port}; see the gRPC error above"
            ) from None

    async def start(self) -> None:
        """Listen (NOT_SERVING), start the services, then report SERVING.

        On failure everything started so far is stopped again before the error is raised, so the
        caller only reports it.
        """
        if self._server is not None:
            raise RuntimeError("server already started")
        self._load_security()
        self._load_tracing()
        await self._set_health(NOT_SERVING)
        server = self._server = self._build()
        try:
            self._port = self._bind(server)
            self._serve_metrics()
            await server.start()
            self._listening = True
            log.info("listening on %s; starting services", self.listen_address)
            for service in self.services:
                await service.start()
                self._started.append(service)
        except BaseException:
            log.debug("start-up failed; stopping what was started", exc_info=True)
            await self.stop(0, quiet=True)
            raise
        await self._set_health(SERVING)
        self._gate.ready = True
        log.info("serving %s on %s", ", ".join(s.name for s in self.services), self.listen_address)

    async def stop(self, grace: float | None = None, *, quiet: bool = False) -> None:
        """Drain: NOT_SERVING, refuse new calls, tell streams to finish, give in-flight calls up to
        ``grace`` s (settings.grace_period_s when None), then stop the gRPC server and services.

        Safe to call more than once and concurrently; later callers wait for the first drain.
        ``quiet`` logs the steps at DEBUG only (a failed start, whose error says it all).
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._drain(grace, quiet))
        await asyncio.shield(self._stopping)

    async def _drain(self, grace: float | None, quiet: bool) -> None:
        grace = self.settings.grace_period_s if grace is None else grace
        level = logging.DEBUG if quiet else logging.INFO
        await self.health.enter_graceful_shutdown()
        self._gate.draining = True
        for service in self._started:
            if isinstance(service, Drains):
                service.drain()
        if self._server is not None:
            in_flight = self._gate.in_flight
            log.log(
                level, "draining: %d call(s) in flight have %.1fs to finish", in_flight.count, grace
            )
            if not await in_flight.wait_idle(grace):
                log.log(
                    logging.DEBUG if quiet else logging.WARNING,
                    "%d call(s) still in flight after the %.1fs grace period are cancelled",
                    in_flight.count,
                    grace,
                )
            # Only health and reflection are left (a health Watch never ends by itself), plus
            # answers handlers have returned but gRPC has not yet written: a short flush grace
            # lets those reach their clients (stop(0) would cancel them: CANCELLED, or a
            # retried duplicate) without waiting the whole grace for open health Watches.
            await self._server.stop(min(grace, FLUSH_S))
        for service in reversed(self._started):
            try:
                await service.stop()
            except Exception:
                log.exception("stopping %s failed", service.name)
        self._started.clear()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)
        if self._gate.tracing is not None:  # send the spans still buffered
            await asyncio.to_thread(self._gate.tracing.shutdown)
        log.log(level, "server stopped")

    async def wait_for_termination(self) -> None:
        """Return when the gRPC server has stopped.

        Beware: cancelling this wait makes grpc.aio stop the server at once (no grace).
        """
        if self._server is not None and self._listening:
            await self._server.wait_for_termination()
        if self._stopping is not None:
            await asyncio.shield(self._stopping)


async def serve(settings: Settings, services: Sequence[Service] = ()) -> None:
    """Run until SIGTERM/SIGINT, then drain for ``settings.grace_period_s``."""
    server = VisionServer(settings, services)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # e.g. Windows
            loop.add_signal_handler(sig, stop_requested.set)
    try:
        await server.start()  # stops what it started when it fails
        try:
            # Not server.wait_for_termination(): grpc.aio shuts the server down *without grace*
            # when that wait is cancelled, which would cut in-flight calls.
            await stop_requested.wait()
            log.info("shutdown requested")
        finally:
            await server.stop(settings.grace_period_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)


def run(settings: Settings, services: Sequence[Service] = ()) -> None:
    """Blocking entry point for the CLI."""
    asyncio.run(serve(settings, services))
