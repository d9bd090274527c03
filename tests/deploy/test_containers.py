"""The CPU image and the seed's compose flow on a real Docker engine (issue 11, items 1 and 2).

The image is built the way a site without a registry builds it: a Debian base from
tools/make_base_image.sh and the wheels from wheelhouse/ (tools/make_wheelhouse.sh, which .ci/run
refreshes), no index inside the build. Every container runs on the host network and the servers
listen on 127.0.0.1 only, so all traffic stays on loopback. The module skips, with the reason,
only where Docker cannot run; every container it starts is removed by name at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.helpers import free_port
from visionrpc.server.drain import DRAINING_MESSAGE
from visionrpc.v1 import core_pb2, core_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
BASE = "visionrpc-base:bookworm"
IMAGE = "visionrpc:test"
GRACE_S = 10
HEALTHY_WITHIN_S = 120.0  # a bound on waiting, not a timing assertion: the probe runs every 5 s

# Building the base image (debootstrap) and the image take minutes on a cold machine.
pytestmark = pytest.mark.timeout(900)


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``docker ARGS``; on failure (with ``check``) the assertion shows its output."""
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check:
        assert done.returncode == 0, f"docker {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def why_docker_cannot_run() -> str | None:
    if shutil.which("docker") is None:
        return "no docker command (.ci/run installs docker.io from apt where it can)"
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "the Docker engine does not answer `docker info`"
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines() or ["no output"]
        return f"the Docker engine cannot run here: {lines[-1]}"
    return None


def compose_command() -> list[str] | None:
    """Compose v2 (`docker compose`) where present, else v1 (`docker-compose`, Debian 12's)."""
    if shutil.which("docker") is None:
        return None
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.fixture(scope="module")
def image() -> str:
    """The CPU image, built from the Debian base and the wheelhouse (both cached between runs)."""
    reason = why_docker_cannot_run()
    if reason is not None:
        pytest.skip(reason)
    if docker("image", "inspect", BASE, check=False).returncode != 0:
        assert shutil.which("debootstrap"), "debootstrap is needed to build the base image"
        subprocess.run(["tools/make_base_image.sh", BASE], cwd=ROOT, check=True, timeout=600)
    if not any((ROOT / "wheelhouse").glob("*.whl")):
        subprocess.run(
            ["tools/make_wheelhouse.sh", "server", sys.executable],
            cwd=ROOT,
            check=True,
            timeout=600,
        )
    build = docker(
        "build", "--build-arg", f"BASE={BASE}", "--build-arg", "PIP_OFFLINE=1",
        "--tag", IMAGE, str(ROOT), timeout=600, check=False,
    )  # fmt: skip
    assert build.returncode == 0, (
        f"the image did not build (a new dependency? tools/make_wheelhouse.sh refreshes "
        f"wheelhouse/):\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    )
    return IMAGE


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names of the containers a test starts; each is removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        docker("rm", "--force", "--volumes", name, check=False)


def state(name: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(
        docker("inspect", "--format", "{{json .State}}", name).stdout
    )
    return parsed


def wait_healthy(name: str) -> None:
    """Until Docker's health check (the image's HEALTHCHECK) reports healthy."""
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while True:
        current = state(name)
        health = current.get("Health", {}).get("Status")
        if health == "healthy":
            return
        logs = docker("logs", "--tail", "20", name, check=False)
        assert current["Running"], f"{name} exited: {current}\n{logs.stdout}{logs.stderr}"
        assert time.monotonic() < deadline, f"{name} not healthy: {current}\n{logs.stderr}"
        time.sleep(0.5)


StartServer = Callable[..., int]


@pytest.fixture
def start_server(image: str, containers: list[str]) -> StartServer:
    """Run the image's server on the host network on a free loopback port; wait until healthy."""

    def start(name: str, *env: str) -> int:
        port = free_port()
        containers.append(name)
        settings = [f"VISIONRPC_PORT={port}", f"VISIONRPC_GRACE_PERIOD_S={GRACE_S}", *env]
        docker(
            "run", "--detach", "--name", name, "--network", "host",
            *(arg for setting in settings for arg in ("--env", setting)),
            image, "visionrpc", "serve", "--host", "127.0.0.1",
        )  # fmt: skip
        wait_healthy(name)
        return port

    return start


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_image_runs_as_non_root_with_the_light_probe_and_no_build_leftovers(image: str) -> None:
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    assert config["User"] == "10001:10001"
    assert config["Cmd"] == ["visionrpc", "serve", "--host", "0.0.0.0"]
    assert config.get("Entrypoint") is None  # exec form: visionrpc itself is PID 1 and gets SIGTERM
    assert config["StopSignal"] == "SIGTERM"
    assert set(config["ExposedPorts"]) == {"50051/tcp", "9464/tcp"}
    assert config["Healthcheck"]["Test"] == ["CMD", "python", "-m", "visionrpc.healthcheck"]
    # The build stage's wheels, CA bundle and pip stay out of the image; the model is inside.
    probe = (
        "test ! -e /tmp/wheelhouse && test ! -e /tmp/pip.conf && test ! -e /opt/visionrpc/bin/pip"
        " && python -c 'import importlib.resources as r;"
        ' print(sorted(p.name for p in r.files("visionrpc.models").iterdir()))\''
    )
    done = docker("run", "--rm", "--network", "host", image, "sh", "-c", probe)
    assert "repository.yaml" in done.stdout and "defects" in done.stdout


def test_demo_from_a_second_container_against_the_healthy_server(
    image: str, start_server: StartServer
) -> None:
    port = start_server(unique("visionrpc-test-server"))
    demo = docker(
        "run", "--rm", "--network", "host", image,
        "visionrpc", "demo", "--target", f"127.0.0.1:{port}", timeout=180,
    )  # fmt: skip
    out = demo.stdout
    assert f"server 127.0.0.1:{port} health: SERVING" in out
    for section in ("== Ping", "== StreamNumbers", "== UploadNumbers", "== Chat", "== Infer"):
        assert section in out, out
    assert "found (" in out and "model defects" in out


def test_metrics_port_from_the_environment_serves_prometheus_text(
    image: str, start_server: StartServer
) -> None:
    """VISIONRPC_METRICS__PORT, as compose sets it (9464 there; a free port here)."""
    has_metrics = docker(
        "run", "--rm", "--network", "host", image, "python", "-c",
        "from visionrpc.settings import Settings; print('metrics' in Settings.model_fields)",
    )  # fmt: skip
    if has_metrics.stdout.strip() != "True":
        pytest.skip("this tree's server has no metrics settings yet (the observability work)")
    metrics_port = free_port()
    port = start_server(
        unique("visionrpc-test-metrics"),
        f"VISIONRPC_METRICS__PORT={metrics_port}",
        "VISIONRPC_METRICS__HOST=127.0.0.1",
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        core_pb2_grpc.CoreServicesStub(channel).Ping(core_pb2.PingRequest(), timeout=10)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    pings = [
        line
        for line in text.splitlines()
        if line.startswith("visionrpc_grpc_requests_total{")
        and 'method="Ping"' in line
        and 'code="OK"' in line
    ]
    assert pings and float(pings[0].rsplit(" ", 1)[1]) >= 1, text[:3000]


def test_docker_stop_drains_an_open_stream_and_exits_0(start_server: StartServer) -> None:
    name = unique("visionrpc-test-drain")
    port = start_server(name)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = core_pb2_grpc.CoreServicesStub(channel)
        stream = stub.StreamNumbers(
            core_pb2.StreamNumbersRequest(count=10_000, interval_ms=100), timeout=120
        )
        first = next(iter(stream))
        assert first.index == 0
        # SIGTERM, then SIGKILL after the timeout: exit code 0 means it drained in time.
        docker("stop", "--time", str(GRACE_S + 20), name, timeout=GRACE_S + 60)
        with pytest.raises(grpc.RpcError) as ended:
            for _ in stream:
                pass
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert DRAINING_MESSAGE in (ended.value.details() or "")
    final = state(name)
    assert (final["Running"], final["ExitCode"], final["OOMKilled"]) == (False, 0, False)
    logs = docker("logs", name).stderr + docker("logs", name).stdout
    messages = [json.loads(line)["message"] for line in logs.splitlines() if line.startswith("{")]
    assert "shutdown requested" in messages
    assert any(m.startswith("draining: 1 call(s) in flight") for m in messages), messages
    assert messages[-1] == "server stopped"


@pytest.fixture
def compose(image: str) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """``docker compose`` with compose.yaml + compose.test.yaml, a project of its own (removed)."""
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    project = unique("visionrpctest")
    env = {
        **os.environ,
        "VISIONRPC_TEST_PORT": str(free_port()),
        "VISIONRPC_BASE": BASE,
        "VISIONRPC_PIP_OFFLINE": "1",
        "VISIONRPC_IMAGE": image,
    }
    files = ["-f", "compose.yaml", "-f", "compose.test.yaml"]

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, "-p", project, *files, *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    try:
        yield run
    finally:
        run("down", "--volumes", "--remove-orphans", timeout=120)


def test_compose_up_runs_the_demo_against_the_server_on_the_host_network(
    compose: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    services = yaml.safe_load(compose("config").stdout)["services"]
    started = {name: s for name, s in services.items() if not s.get("profiles")}  # v1 lists all
    assert {name: spec.get("network_mode") for name, spec in started.items()} == {
        "server": "host",
        "demo": "host",
    }  # no profile: only the seed's pair, and both on the host network
    up = compose("up", "--build", "--abort-on-container-exit", "--exit-code-from", "demo")
    assert up.returncode == 0, f"{up.stdout[-4000:]}\n{up.stderr[-4000:]}"
    assert "health: SERVING" in up.stdout and "== Infer" in up.stdout
    assert "found (" in up.stdout


def test_compose_profiles_gpu_and_monitoring_render(image: str) -> None:
    """The GPU and monitoring images cannot be pulled here: their profiles are checked rendered."""
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    done = subprocess.run(
        [*command, "--profile", "gpu", "--profile", "monitoring", "config"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert set(services) == {"server", "demo", "server-gpu", "demo-gpu", "prometheus", "grafana"}

    gpu = services["server-gpu"]
    assert gpu["build"]["dockerfile"] == "Dockerfile.gpu"
    assert gpu["build"]["args"]["BASE"].startswith("nvidia/cuda:")
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert (device["driver"], device["capabilities"]) == ("nvidia", ["gpu"])
    assert device["count"] in ("all", -1)  # compose v2 renders "all" as -1
    assert [_target(v) for v in gpu["volumes"]] == ["/var/cache/visionrpc"]  # TensorRT engines

    mounts = {
        _target(v): _source(v) for s in ("prometheus", "grafana") for v in services[s]["volumes"]
    }
    monitoring = ROOT / "deploy" / "monitoring"
    assert mounts == {
        "/etc/prometheus": str(monitoring),
        "/etc/grafana/provisioning": str(monitoring / "grafana" / "provisioning"),
        "/var/lib/grafana/dashboards": str(monitoring / "grafana" / "dashboards"),
    }
    assert all(services[s]["network_mode"] == "host" for s in ("prometheus", "grafana"))
    hosts = services["grafana"]["extra_hosts"]  # its data source is http://prometheus:9090
    if isinstance(hosts, list):  # "name:ip" or "name=ip", as the compose version renders it
        hosts = dict(h.replace("=", ":", 1).split(":", 1) for h in hosts)
    assert hosts == {"prometheus": "127.0.0.1"}
    # The server serves metrics on the port Prometheus scrapes (127.0.0.1:9464, published).
    env = services["server"]["environment"]
    assert (env["VISIONRPC_METRICS__PORT"], env["VISIONRPC_METRICS__HOST"]) == ("9464", "0.0.0.0")


def _target(volume: Any) -> str:
    """A rendered volume's container path (compose v2 renders dicts, v1 "src:dst:mode" strings)."""
    return str(volume["target"] if isinstance(volume, dict) else volume.split(":")[1])


def _source(volume: Any) -> str:
    return str(volume["source"] if isinstance(volume, dict) else volume.split(":")[0])
