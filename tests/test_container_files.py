"""Checks of the container files that need no Docker engine: one image, a light probe, a licence."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_builds_one_image_and_reuses_it() -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    built = [name for name, spec in services.items() if "build" in spec]
    assert built == ["server"]
    images = {spec.get("image") for spec in services.values()}
    assert images == {services["server"]["image"]}  # every service runs the one built image


def test_image_health_check_is_the_light_probe_and_installs_the_server() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    health = next(line for line in dockerfile.splitlines() if line.startswith("HEALTHCHECK"))
    assert '"python", "-m", "visionrpc.healthcheck"' in health
    assert "visionrpc health" not in health
    assert 'pip install --no-cache-dir ".[server]"' in dockerfile


def test_license_file_is_the_declared_license() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
