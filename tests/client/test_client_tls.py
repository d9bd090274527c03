"""The blocking client and the health probe over TLS/mTLS with a token, against a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.certs import Pki, make_pki
from tests.helpers import RunningServer, StartThreadedServer
from visionrpc import healthcheck
from visionrpc.client import Client, TlsFileError

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
TOKEN = "client-test-token"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def mtls_server(
    start_threaded_server: StartThreadedServer, pki: Pki, tmp_path: Path
) -> RunningServer:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"- name: tester\n  token: {TOKEN}\n  scopes: [core]\n")
    return start_threaded_server(
        access_log=False, auth={"tokens_file": tokens}, **pki.server_settings(mutual=True)
    )


def test_client_with_ca_cert_key_and_token(mtls_server: RunningServer, pki: Pki) -> None:
    with Client(
        mtls_server.address,
        ca_file=pki.ca_file,
        cert_file=pki.client_cert_file,
        key_file=pki.client_key_file,
        token=TOKEN,
        options=OWN_CONNECTION,
    ) as client:
        assert client.tls
        assert client.ping("secure").message == "secure"
        assert client.health().serving


def test_client_options_from_the_environment(
    mtls_server: RunningServer, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VISIONRPC_CA_FILE", str(pki.ca_file))
    monkeypatch.setenv("VISIONRPC_CLIENT_CERT_FILE", str(pki.client_cert_file))
    monkeypatch.setenv("VISIONRPC_CLIENT_KEY_FILE", str(pki.client_key_file))
    monkeypatch.setenv("VISIONRPC_TOKEN", TOKEN)
    monkeypatch.setenv("VISIONRPC_SERVER_NAME", "localhost")
    with Client(mtls_server.address, options=OWN_CONNECTION) as client:
        assert client.ping("from env").message == "from env"


def test_tls_without_a_ca_file_uses_the_system_roots(mtls_server: RunningServer, pki: Pki) -> None:
    """The test CA is not among the system roots, so the handshake fails: proof of which roots."""
    with (
        Client(
            mtls_server.address,
            tls=True,
            cert_file=pki.client_cert_file,
            key_file=pki.client_key_file,
            token=TOKEN,
            timeout=5,
            options=OWN_CONNECTION,
        ) as client,
        pytest.raises(grpc.RpcError) as info,
    ):
        client.ping()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in (info.value.details() or "")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"ca_file": "{dir}/nope.pem"}, "cannot read the CA file {dir}/nope.pem: No such file or "
         "directory"),
        ({"ca_file": "{dir}/junk.pem"}, "the CA file {dir}/junk.pem holds no PEM certificate"),
        ({"cert_file": "{cert}"}, "a client certificate file needs its client key file too"),
        ({"key_file": "{key}"}, "a client key file needs its client certificate file too"),
        ({"cert_file": "{cert}", "key_file": "{dir}/junk.pem"}, "the client key file "
         "{dir}/junk.pem holds no unencrypted PEM private key"),
    ],
)  # fmt: skip
def test_bad_client_files_name_the_file(
    files: dict[str, str], expected: str, pki: Pki, tmp_path: Path
) -> None:
    (tmp_path / "junk.pem").write_text("junk")
    names = {"dir": tmp_path, "cert": pki.client_cert_file, "key": pki.client_key_file}
    paths: dict[str, Any] = {k: v.format(**names) for k, v in files.items()}
    with pytest.raises(TlsFileError) as info:
        Client("127.0.0.1:1", **paths)
    assert str(info.value) == expected.format(**names)


def test_health_probe_over_mtls(
    mtls_server: RunningServer, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VISIONRPC_CA_FILE", str(pki.ca_file))
    monkeypatch.setenv("VISIONRPC_CLIENT_CERT_FILE", str(pki.client_cert_file))
    monkeypatch.setenv("VISIONRPC_CLIENT_KEY_FILE", str(pki.client_key_file))
    assert healthcheck.main([mtls_server.address]) == 0  # health is open: no token needed
    monkeypatch.setenv("VISIONRPC_CA_FILE", str(pki.ca_file.with_name("missing.pem")))
    assert healthcheck.main([mtls_server.address]) == 1


def test_health_probe_reports_a_bad_file_in_one_line(pki: Pki, tmp_path: Path) -> None:
    env = {"VISIONRPC_CA_FILE": str(tmp_path / "missing.pem"), "PATH": ""}
    done = subprocess.run(
        [sys.executable, "-m", "visionrpc.healthcheck", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "PYTHONPATH": ":".join(sys.path)},
        check=False,
    )
    assert (done.returncode, done.stderr) == (
        1,
        f"unhealthy: cannot read the CA file {tmp_path / 'missing.pem'}: No such file or "
        "directory\n",
    )
