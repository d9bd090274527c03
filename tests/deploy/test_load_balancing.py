"""Load balancing and failover over three real ``visionrpc serve`` processes on loopback.

(a) the client library with a multi-address target (``round_robin``) and (b) nginx from Debian
as an L7 gRPC proxy (``grpc_pass``). For each: a bounded load of Infer calls spreads over all
replicas within ±25% of the mean, SIGTERM to one replica in the middle of a load fails no call,
and a replica started again later gets traffic. (c) behind a connection-level (L4) balancer, as
a plain Kubernetes Service is, a client stays on one replica until the server's maximum
connection age closes its connection: a replica started later then gets its share (and without
an age it gets nothing).

Calls per replica are counted from each server's access log (one line per call).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from tests.helpers import free_port
from tests.runtime.onnx_builders import tiny_models
from tests.server.drain_helpers import CLEAN_ENV, JPEG, wait_serving
from visionrpc.client import Client

CALLS = 2400
"""Infer calls per load (small JPEGs), spread over WORKERS threads."""
WORKERS = 8
TOLERANCE = 0.25
AGE_MS = 1000
"""The servers' maximum connection age (short, so the L4 test takes seconds)."""
GRACE_S = 10.0
INFER_OK = re.compile(r"/visionrpc\.v1\.InferenceMethods/Infer OK ")
INFER_REFUSED = re.compile(r"/visionrpc\.v1\.InferenceMethods/Infer UNAVAILABLE ")

pytestmark = pytest.mark.timeout(300)


@dataclass
class Replica:
    """One ``visionrpc serve`` process with the access log on, counted from its log file."""

    port: int
    models: Path
    log: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    _counted: int = field(default=0)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    *(
                        sys.executable,
                        "-m",
                        "visionrpc.cli.main",
                        "serve",
                        "--port",
                        str(self.port),
                    ),
                    *("--models", str(self.models), "--access-log", "--grace", str(GRACE_S)),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    def wait_serving(self) -> None:
        assert self.process is not None
        wait_serving(self.address, self.process)

    def infer_calls(self) -> int:
        """Infer calls answered OK since the last look."""
        total = len(INFER_OK.findall(self.log.read_text(errors="replace")))
        new, self._counted = total - self._counted, total
        return new

    def refused(self) -> int:
        """Infer calls refused with UNAVAILABLE (draining) so far: each was retried elsewhere."""
        return len(INFER_REFUSED.findall(self.log.read_text(errors="replace")))

    def terminate(self) -> int:
        """SIGTERM; the exit code once the drain is over."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(GRACE_S * 2)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(30)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models(tmp_path_factory.mktemp("models"))


@contextlib.contextmanager
def replicas(count: int, models: Path, logs: Path, **env: str) -> Iterator[list[Replica]]:
    """``count`` serving replicas on free loopback ports, killed at the end if still running."""
    environment = {**CLEAN_ENV, **{f"VISIONRPC_{k.upper()}": v for k, v in env.items()}}
    started = [
        Replica(free_port(), models, logs / f"replica-{i}.log", environment) for i in range(count)
    ]
    try:
        for replica in started:
            replica.start()
        for replica in started:
            replica.wait_serving()
        yield list(started)  # a copy: a test may take replicas out of it, all are stopped here
    finally:
        for replica in started:
            replica.kill()


@dataclass
class Load:
    ok: int = 0
    failures: list[str] = field(default_factory=list)


def drive(
    client: Client, calls: int, at_half: Callable[[], None] | None = None, limit_s: float = 120
) -> Load:
    """``calls`` Infer calls from WORKERS threads; ``at_half`` runs (in its own thread) once half
    were sent. Bounded by ``limit_s``: calls not sent by then are not sent."""
    load, lock, counter = Load(), threading.Lock(), itertools.count()
    deadline = time.monotonic() + limit_s
    helper: list[threading.Thread] = []

    def worker() -> None:
        while (index := next(counter)) < calls and time.monotonic() < deadline:
            if index == calls // 2 and at_half is not None:
                helper.append(threading.Thread(target=at_half))
                helper[-1].start()
            try:
                client.infer(JPEG, request_id=str(index))
            except grpc.RpcError as exc:
                with lock:
                    load.failures.append(f"{exc.code().name}: {exc.details()}")
            else:
                with lock:
                    load.ok += 1

    with ThreadPoolExecutor(WORKERS) as pool:
        for done in [pool.submit(worker) for _ in range(WORKERS)]:
            done.result()
    for thread in helper:
        thread.join(GRACE_S * 3)
    return load


def assert_spread(counts: list[int]) -> None:
    mean = sum(counts) / len(counts)
    assert all(abs(c - mean) <= TOLERANCE * mean for c in counts), (counts, mean)


def report(label: str, **numbers: object) -> None:
    """Print the numbers (visible with ``pytest -s``; the report quotes them)."""
    print(f"\n[{label}] " + " ".join(f"{k}={v}" for k, v in numbers.items()))


def balance_failover_restart(name: str, client: Client, pool: list[Replica]) -> None:
    """The three checks both (a) and (b) make through ``client``."""
    for replica in pool:
        replica.infer_calls()
    load = drive(client, CALLS)
    spread = [r.infer_calls() for r in pool]
    report(f"{name} balance", ok=load.ok, failures=len(load.failures), per_replica=spread)
    assert load.failures == [] and load.ok == CALLS
    assert sum(spread) == CALLS
    assert_spread(spread)

    exit_codes: list[int] = []
    load = drive(client, CALLS, at_half=lambda: exit_codes.append(pool[2].terminate()))
    during = [r.infer_calls() for r in pool]
    report(
        f"{name} SIGTERM",
        ok=load.ok,
        failures=len(load.failures),
        per_replica=during,
        refused_while_draining=pool[2].refused(),
    )
    assert load.failures == [], load.failures[:5]
    assert load.ok == CALLS and exit_codes == [0]
    # A call the stopping replica answered as its connection closed may be answered again by
    # another (the client saw no response, so it retried): at least once, rarely twice.
    assert during[2] > 0 and CALLS <= sum(during) <= CALLS + WORKERS

    pool[2].start()  # the replica comes back (a new pod at the same address)
    pool[2].wait_serving()
    calls, failures = until_replica_gets_traffic(client, pool[2])
    report(f"{name} restarted", calls_until_it_got_traffic=calls, failures=failures)
    assert failures == 0


def until_replica_gets_traffic(client: Client, replica: Replica) -> tuple[int, int]:
    """Loads of 100 calls until ``replica`` answers some (bounded: 30 s, 20 000 calls); the calls
    made and failed. Fails the test if it never does."""
    deadline = time.monotonic() + 30
    calls = failures = 0
    while time.monotonic() < deadline and calls < 20_000:
        load = drive(client, 100)
        failures += len(load.failures)
        calls += load.ok + len(load.failures)
        if replica.infer_calls():
            return calls, failures
    raise AssertionError(f"no traffic reached the replica in {calls} calls")


def test_client_round_robin_spreads_fails_nothing_on_sigterm(models: Path, tmp_path: Path) -> None:
    with replicas(3, models, tmp_path, connections__max_connection_age_ms=str(AGE_MS)) as pool:
        target = "ipv4:" + ",".join(r.address for r in pool)
        with Client(target, timeout=30) as client:
            balance_failover_restart("client round_robin", client, pool)


NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream visionrpc {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            grpc_pass grpc://visionrpc;
            # A replica that stopped listening: try the next one. Infer is safe to resend, hence
            # non_idempotent (gRPC calls are POSTs). A draining replica's UNAVAILABLE is a gRPC
            # status in a 200 response: nginx passes it on and the client's retry policy resends
            # it, which nginx sends to the next replica.
            grpc_next_upstream error timeout non_idempotent;
            grpc_next_upstream_tries 3;
            grpc_connect_timeout 2s;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(upstreams: list[str], prefix: Path) -> Iterator[str]:
    """nginx in the foreground with a generated config under ``prefix``; yields its address."""
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
    )
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run does)")
    port = free_port()
    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=1s;" for u in upstreams)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, servers=servers, port=port))
    process = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket_to(port):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                log = (prefix / "error.log").read_text(errors="replace")
                raise AssertionError(f"nginx did not start: {log[-2000:]}")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


@contextlib.contextmanager
def socket_to(port: int) -> Iterator[None]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1):
        yield


def test_nginx_grpc_proxy_spreads_fails_nothing_on_sigterm(models: Path, tmp_path: Path) -> None:
    if shutil.which("nginx") is None and not os.access("/usr/sbin/nginx", os.X_OK):
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run does)")
    with replicas(3, models, tmp_path, connections__max_connection_age_ms=str(AGE_MS)) as pool:
        (tmp_path / "nginx").mkdir()
        with (
            nginx([r.address for r in pool], tmp_path / "nginx") as address,
            Client(address, timeout=30) as client,
        ):
            balance_failover_restart("nginx grpc_pass", client, pool)


class ConnectionBalancer:
    """A stand-in for kube-proxy (a ClusterIP Service): each new TCP connection goes to the next
    backend, and its bytes are copied both ways; it knows nothing of HTTP/2 or gRPC."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self._next = itertools.count()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnectionBalancer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", 0)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = self.backends[next(self._next) % len(self.backends)]
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def test_behind_a_connection_balancer_a_late_replica_gets_traffic_after_the_age(
    models: Path, tmp_path: Path
) -> None:
    with replicas(3, models, tmp_path, connections__max_connection_age_ms=str(AGE_MS)) as pool:
        late = pool.pop()  # serving, but not yet behind the balancer
        with (
            ConnectionBalancer([r.port for r in pool]) as balancer,
            Client(f"127.0.0.1:{balancer.port}", timeout=30) as client,
        ):
            for replica in [*pool, late]:
                replica.infer_calls()
            balancer.backends.append(late.port)  # "a new pod joins the Service"
            calls, failures = until_replica_gets_traffic(client, late)
            report("L4 late replica", calls_until_it_got_traffic=calls, failures=failures)
            assert failures == 0


def test_behind_a_connection_balancer_without_an_age_a_client_stays_on_one_replica(
    models: Path, tmp_path: Path
) -> None:
    """The contrast: the same setup without a maximum connection age; the client's one connection
    (and every call on it) stays on the replica it first reached, the late one gets nothing."""
    with replicas(3, models, tmp_path) as pool:
        late = pool.pop()
        with (
            ConnectionBalancer([r.port for r in pool]) as balancer,
            Client(f"127.0.0.1:{balancer.port}", timeout=30) as client,
        ):
            balancer.backends.append(late.port)
            for replica in [*pool, late]:
                replica.infer_calls()
            load = drive(client, 1600)
            spread = [r.infer_calls() for r in [*pool, late]]
            report("L4 no age", ok=load.ok, failures=len(load.failures), per_replica=spread)
            assert load.failures == []
            assert sorted(spread) == [0, 0, 1600] and spread[-1] == 0
