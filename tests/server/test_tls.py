"""TLS and mutual TLS on a real server: handshakes, refusals, certificate rotation, start-up errors.

Certificates come from throwaway CAs (trustme). Every client uses its own subchannel pool, so each
one opens its own connection (gRPC would otherwise share one between equal channels).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import pytest

from tests.certs import Pki, make_pki, write_leaf
from tests.helpers import RunningServer, StartServer, make_settings
from tests.runtime.onnx_builders import tiny_models
from visionrpc.client import AsyncClient
from visionrpc.server.app import StartupError, VisionServer
from visionrpc.server.inference_servicer import InferenceServicer

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tls"), "main")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tls"), "other")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models(tmp_path_factory.mktemp("models"))


async def start(start_server: StartServer, models_dir: Path, **overrides: Any) -> RunningServer:
    overrides = {"access_log": False, "models_dir": models_dir, **overrides}
    return await start_server([InferenceServicer(make_settings(**overrides))], **overrides)


def client(server: RunningServer, **kwargs: Any) -> AsyncClient:
    return AsyncClient(
        server.address, options=OWN_CONNECTION, **{"token": "", "timeout": 5, **kwargs}
    )


PNG_64: bytes = cv2.imencode(".png", np.full((64, 64, 3), 128, np.uint8))[1].tobytes()


async def test_tls_serves_ping_and_infer(
    start_server: StartServer, models_dir: Path, pki: Pki
) -> None:
    server = await start(start_server, models_dir, **pki.server_settings())
    async with client(server, ca_file=pki.ca_file) as c:
        assert (await c.ping("over tls")).message == "over tls"
        result = await c.infer(PNG_64)
        assert [d.class_name for d in result.detections] == ["dent"]


async def test_plaintext_client_cannot_talk_to_a_tls_server(
    start_server: StartServer, models_dir: Path, pki: Pki
) -> None:
    server = await start(start_server, models_dir, **pki.server_settings())
    async with client(server, tls=False) as c:
        with pytest.raises(grpc.RpcError) as info:
            await c.ping()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_trusting_another_ca_is_refused(
    start_server: StartServer, models_dir: Path, pki: Pki, other_pki: Pki
) -> None:
    server = await start(start_server, models_dir, **pki.server_settings())
    async with client(server, ca_file=other_pki.ca_file) as c:
        with pytest.raises(grpc.RpcError) as info:
            await c.ping()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    async with client(server, ca_file=pki.ca_file) as c:  # the server still serves
        assert (await c.ping("still")).message == "still"


async def test_server_name_override_for_a_certificate_of_another_name(
    start_server: StartServer, models_dir: Path, pki: Pki, tmp_path: Path
) -> None:
    cert, key = tmp_path / "named.pem", tmp_path / "named.key"
    write_leaf(pki.ca.issue_cert("vision.factory.example"), cert, key)
    server = await start(start_server, models_dir, tls={"cert_file": cert, "key_file": key})
    async with client(server, ca_file=pki.ca_file) as c:
        with pytest.raises(grpc.RpcError):  # 127.0.0.1 is not the certificate's name
            await c.ping()
    async with client(server, ca_file=pki.ca_file, server_name="vision.factory.example") as c:
        assert (await c.ping("named")).message == "named"


async def test_mtls_refuses_a_client_without_a_certificate(
    start_server: StartServer, models_dir: Path, pki: Pki, other_pki: Pki
) -> None:
    server = await start(start_server, models_dir, **pki.server_settings(mutual=True))
    async with client(server, ca_file=pki.ca_file) as c:
        with pytest.raises(grpc.RpcError) as info:
            await c.ping()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # a certificate from a CA the server does not trust is refused too
    foreign = {"cert_file": other_pki.client_cert_file, "key_file": other_pki.client_key_file}
    async with client(server, ca_file=pki.ca_file, **foreign) as c:
        with pytest.raises(grpc.RpcError) as info:
            await c.ping()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    mine = {"cert_file": pki.client_cert_file, "key_file": pki.client_key_file}
    async with client(server, ca_file=pki.ca_file, **mine) as c:
        assert (await c.ping("mutual")).message == "mutual"
        assert [d.class_name for d in (await c.infer(PNG_64)).detections] == ["dent"]


async def test_a_rotated_certificate_is_served_to_new_connections(
    start_server: StartServer,
    models_dir: Path,
    pki: Pki,
    other_pki: Pki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    write_leaf(pki.ca.issue_cert("localhost", "127.0.0.1"), cert, key)
    server = await start(start_server, models_dir, tls={"cert_file": cert, "key_file": key})
    async with client(server, ca_file=pki.ca_file) as old:
        assert (await old.ping("before")).message == "before"
        caplog.set_level(logging.INFO, "visionrpc.server.tls")
        # renewal by another CA: only clients trusting that CA can verify the new certificate
        write_leaf(other_pki.ca.issue_cert("localhost", "127.0.0.1"), cert, key)
        async with client(server, ca_file=other_pki.ca_file) as new:
            assert (await new.ping("after")).message == "after"
        async with client(server, ca_file=pki.ca_file) as stale:
            with pytest.raises(grpc.RpcError) as info:
                await stale.ping()
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # the connection opened before the renewal keeps working
        assert (await old.ping("open")).message == "open"
    assert any("TLS files changed" in r.getMessage() for r in caplog.records)


async def test_a_broken_rotation_keeps_the_current_certificate(
    start_server: StartServer,
    models_dir: Path,
    pki: Pki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    write_leaf(pki.ca.issue_cert("localhost", "127.0.0.1"), cert, key)
    server = await start(start_server, models_dir, tls={"cert_file": cert, "key_file": key})
    key.write_bytes(b"half written")
    caplog.set_level(logging.WARNING, "visionrpc.server.tls")
    async with client(server, ca_file=pki.ca_file) as c:
        assert (await c.ping("kept")).message == "kept"
    assert any(
        "cannot be used" in r.getMessage() and str(key) in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        ({"cert_file": "{dir}/missing.pem", "key_file": "{key}"}, "cannot read the certificate "
         "file {dir}/missing.pem: No such file or directory"),
        ({"cert_file": "{cert}", "key_file": "{dir}/junk.pem"}, "the key file {dir}/junk.pem "
         "holds no unencrypted PEM private key"),
        ({"cert_file": "{cert}", "key_file": "{other_key}"}, "the key {other_key} does not "
         "belong to the certificate {cert}"),
        ({"cert_file": "{cert}", "key_file": "{key}", "client_ca_file": "{dir}/junk.pem"},
         "the client CA file {dir}/junk.pem holds no PEM certificate"),
        ({"cert_file": "{cert}"}, "tls.cert_file (--tls-cert) is set but tls.key_file "
         "(--tls-key) is not; TLS needs both"),
        ({"client_ca_file": "{ca}"}, "tls.client_ca_file (--tls-client-ca) needs TLS: set "
         "tls.cert_file and tls.key_file"),
    ],
)  # fmt: skip
async def test_bad_tls_files_stop_start_up_naming_the_file(
    tls: dict[str, str], expected: str, pki: Pki, other_pki: Pki, tmp_path: Path
) -> None:
    (tmp_path / "junk.pem").write_text("not pem")
    names = {
        "dir": str(tmp_path),
        "cert": str(pki.cert_file),
        "key": str(pki.key_file),
        "other_key": str(other_pki.key_file),
        "ca": str(pki.ca_file),
    }
    server = VisionServer(make_settings(tls={k: v.format(**names) for k, v in tls.items()}))
    with pytest.raises(StartupError) as info:
        await server.start()
    assert str(info.value) == expected.format(**names)
    assert server.port == 0  # nothing was bound
