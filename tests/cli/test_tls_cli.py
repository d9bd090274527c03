"""Client commands with TLS options and --token; serve's TLS flags and token file errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tests.certs import Pki, make_pki
from tests.helpers import RunningServer, StartThreadedServer
from visionrpc.cli.main import app

runner = CliRunner()
TOKEN = "cli-test-token"
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("VISIONRPC_")}


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tls"), "other")


@pytest.fixture
def secured(start_threaded_server: StartThreadedServer, pki: Pki, tmp_path: Path) -> RunningServer:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"- name: cli\n  token: {TOKEN}\n  scopes: [core]\n")
    return start_threaded_server(
        access_log=False, auth={"tokens_file": tokens}, **pki.server_settings(mutual=True)
    )


def mtls_args(pki: Pki) -> list[str]:
    cert, key = str(pki.client_cert_file), str(pki.client_key_file)
    return ["--ca-file", str(pki.ca_file), "--cert", cert, "--key", key]


def test_ping_and_health_over_mtls_with_a_token(secured: RunningServer, pki: Pki) -> None:
    result = invoke("ping", "hi", "--target", secured.address, *mtls_args(pki), "--token", TOKEN)
    assert result.exit_code == 0, result.output
    assert "'hi' from visionrpc" in result.stdout
    health = invoke("health", "--target", secured.address, *mtls_args(pki))
    assert (health.exit_code, health.stdout) == (0, "SERVING\n")


def test_the_token_comes_from_the_environment(
    secured: RunningServer, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VISIONRPC_TOKEN", TOKEN)
    result = invoke("numbers", "upload", "1", "2", "--target", secured.address, *mtls_args(pki))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("count=2 sum=3 ")


def test_without_a_token_the_error_says_what_to_send(secured: RunningServer, pki: Pki) -> None:
    result = invoke("ping", "--target", secured.address, *mtls_args(pki))
    assert result.exit_code == 1
    assert result.stderr == (
        "error: UNAUTHENTICATED: this server needs a token: send the metadata 'authorization: "
        "Bearer <token>' (visionrpc CLI: --token or VISIONRPC_TOKEN)\n"
    )


def test_a_missing_ca_file_is_one_line_naming_it(secured: RunningServer, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    for command in (["ping"], ["models"], ["numbers", "stream"], ["bench"]):
        result = invoke(*command, "--target", secured.address, "--ca-file", str(missing))
        assert (result.exit_code, result.stderr) == (
            1,
            f"error: cannot read the CA file {missing}: No such file or directory\n",
        ), command


def test_a_server_signed_by_another_ca_is_a_tls_error_with_a_hint(
    secured: RunningServer, other_pki: Pki
) -> None:
    args = ["--ca-file", str(other_pki.ca_file), "--cert", str(other_pki.client_cert_file)]
    result = invoke(
        "ping", "--target", secured.address, *args, "--key", str(other_pki.client_key_file)
    )
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: TLS handshake with {secured.address} failed (CERTIFICATE_VERIFY_FAILED"
    )
    assert result.stderr.endswith(
        "check --ca-file (the CA that signed the server's certificate) and --server-name\n"
    )


def test_plaintext_or_no_client_certificate_hints_at_tls(secured: RunningServer, pki: Pki) -> None:
    for args in ([], ["--ca-file", str(pki.ca_file)]):
        result = invoke("ping", "--target", secured.address, *args)
        assert (result.exit_code, result.stderr) == (
            1,
            f"error: the server at {secured.address} closed the connection; it may need TLS "
            "(--tls, --ca-file) or a client certificate (--cert, --key)\n",
        ), args


def test_every_client_command_has_the_connection_options() -> None:
    commands = [
        ["ping"], ["numbers", "stream"], ["numbers", "upload"], ["chat"], ["health"], ["demo"],
        ["infer"], ["infer-stream"], ["models"], ["eval"], ["bench"],
    ]  # fmt: skip
    for command in commands:
        text = invoke(*command, "--help").stdout
        for option in ("--tls", "--ca-file", "--cert", "--key", "--server-name", "--token"):
            assert option in text, (command, option)


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "visionrpc.cli.main", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**CLEAN_ENV, "COLUMNS": "200"},
        check=False,
    )


def test_serve_with_a_missing_certificate_stops_in_one_line(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    result = serve("--tls-cert", str(missing), "--tls-key", str(pki.key_file))
    assert (result.returncode, result.stderr) == (
        1,
        f"error: cannot read the certificate file {missing}: No such file or directory\n",
    )


def test_serve_with_a_bad_client_ca_stops_in_one_line(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("junk")
    tls = ["--tls-cert", str(pki.cert_file), "--tls-key", str(pki.key_file)]
    result = serve(*tls, "--tls-client-ca", str(junk))
    assert (result.returncode, result.stderr) == (
        1,
        f"error: the client CA file {junk} holds no PEM certificate\n",
    )


def test_serve_with_a_bad_tokens_file_stops_in_one_line(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("- name: a\n  scopes: [core]\n")
    result = subprocess.run(
        [sys.executable, "-m", "visionrpc.cli.main", "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**CLEAN_ENV, "VISIONRPC_AUTH__TOKENS_FILE": str(tokens)},
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"error: tokens file {tokens}: entry 1: give exactly one of sha256 (hex digest of the "
        "token) or token (expected a list of {name, sha256 or token, scopes})\n"
    )
