"""promtool (Debian's `prometheus` package) accepts the config and the rules, and the rules'
unit tests (deploy/monitoring/rules_test.yml: input series, expected records and alerts) pass."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.monitoring.monitoring_files import (
    MONITORING,
    PROMETHEUS_CONFIG,
    RULES,
    RULES_TEST,
    rules,
)

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian: apt-get install prometheus; .ci/run does it)",
)


def promtool(*args: str) -> str:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=MONITORING, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_rules_check() -> None:
    assert f"SUCCESS: {len(rules())} rules found" in promtool("check", "rules", str(RULES))


def test_config_check_with_its_rules() -> None:
    output = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert "is valid prometheus config file syntax" in output
    assert "SUCCESS: 1 rule files found" in output


def test_rules_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(RULES_TEST))
