"""Checks of the container files that need no Docker engine: one image per Dockerfile, the light
probe, build args with empty defaults (no site's hosts committed), a licence.

tests/deploy/test_containers.py builds and runs them on a real engine."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")


def instructions(name: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / name).read_text())
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_compose_builds_each_image_once_and_reuses_it() -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    built = {name: spec["image"] for name, spec in services.items() if "build" in spec}
    assert set(built) == {"server", "server-gpu"}
    for name, spec in services.items():
        if name.startswith("demo"):  # the demo runs the CPU image that the server builds
            assert spec["image"] == built["server"]
            assert spec["depends_on"][f"server{name[4:]}"]["condition"] == "service_healthy"
    assert services["server-gpu"]["profiles"] == ["gpu"]
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]


def test_test_override_puts_every_service_of_the_test_path_on_the_host_network() -> None:
    test = yaml.safe_load((ROOT / "compose.test.yaml").read_text())["services"]
    assert {name: spec["network_mode"] for name, spec in test.items()} == {
        "server": "host",
        "demo": "host",
    }
    # Ports are published only by compose.override.yaml, which -f compose.test.yaml leaves out.
    for name in ("compose.yaml", "compose.test.yaml"):
        services = yaml.safe_load((ROOT / name).read_text())["services"]
        assert not any("ports" in spec for spec in services.values()), name
    override = yaml.safe_load((ROOT / "compose.override.yaml").read_text())["services"]
    assert override["server"]["ports"] == ["50051:50051", "127.0.0.1:9464:9464"]


def test_images_use_the_light_probe_exec_form_and_a_non_root_user() -> None:
    for name in DOCKERFILES:
        lines = instructions(name)
        health = next(line for line in lines if line.startswith("HEALTHCHECK"))
        assert 'CMD ["python", "-m", "visionrpc.healthcheck"]' in health, name
        assert "visionrpc health" not in health
        assert lines[-1] == 'CMD ["visionrpc", "serve", "--host", "0.0.0.0"]', name
        assert "STOPSIGNAL SIGTERM" in lines and "USER 10001:10001" in lines, name
        assert not any(line.startswith("ENTRYPOINT") for line in lines), name
        assert "EXPOSE 50051 9464" in lines, name


def test_build_args_default_to_empty_and_the_base_is_an_argument() -> None:
    for name in DOCKERFILES:
        lines = instructions(name)
        assert lines[0].startswith("ARG BASE="), name
        assert lines.count("FROM ${BASE} AS build") == 1 and lines.count("FROM ${BASE}") == 1
        for arg in ("INDEX_URL", "EXTRA_INDEX_URL", "TRUSTED_HOST", "PIP_OFFLINE"):
            assert f'ARG {arg}=""' in lines, (name, arg)
    gpu = instructions("Dockerfile.gpu")
    assert gpu[0].startswith("ARG BASE=nvidia/cuda:") and "cudnn-runtime" in gpu[0]
    assert any("extra_requirements.py gpu" in line for line in gpu)  # onnxruntime-gpu only
    assert 'VOLUME ["/var/cache/visionrpc"]' in gpu
    assert any("TMPDIR=/var/cache/visionrpc" in line for line in gpu)


def test_gpu_extra_installs_onnxruntime_gpu_and_not_the_cpu_build() -> None:
    def reqs(extra: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "tools/extra_requirements.py", extra],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return [re.split(r"[<>=!~\[; ]", line)[0] for line in done.stdout.split()]

    gpu, cpu = reqs("gpu"), reqs("server")
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert "opencv-python-headless" in cpu and not any(r.startswith("visionrpc") for r in cpu)


def test_build_context_is_an_allow_list_that_keeps_local_files_out() -> None:
    text = (ROOT / ".dockerignore").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"  # everything out, then only what the Dockerfiles copy back in
    assert {"!src", "!pyproject.toml", "!wheelhouse", "!tools/extra_requirements.py"} <= set(lines)
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "/wheelhouse/*" in ignored  # wheels and a CA bundle never get committed


def test_monitoring_profile_mounts_files_that_exist() -> None:
    monitoring = ROOT / "deploy" / "monitoring"
    if not monitoring.is_dir():
        pytest.skip("deploy/monitoring/ is not in this tree yet (the observability work adds it)")
    for path in ("prometheus.yml", "rules.yml", "grafana/provisioning", "grafana/dashboards"):
        assert (monitoring / path).exists(), path


def test_license_file_is_the_declared_license() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
