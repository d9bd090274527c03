"""Bearer tokens with scopes on a real server: who may call what, and what a refused caller reads.

The token list mixes a ``sha256`` entry and a plain ``token`` entry. A test-only service echoes
:func:`~visionrpc.server.identity.caller_identity` to show what servicers see.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import RunningServer, StartServer, make_settings
from visionrpc.client import AsyncClient
from visionrpc.server import auth
from visionrpc.server.app import StartupError, VisionServer
from visionrpc.server.auth import Authenticator
from visionrpc.server.identity import caller_identity
from visionrpc.settings import Settings

STATION = "station-7-secret-token"
OPS = "ops-secret-token"
TOKENS_YAML = f"""
- name: station-7
  sha256: {hashlib.sha256(STATION.encode()).hexdigest()}
  scopes: [inference]
- name: ops
  token: {OPS}
  scopes: [inference, models, core]
"""
WHOAMI = "visionrpc.test.WhoAmI"


class WhoAmI:
    """A service whose methods answer with the caller's identity (unary and streaming)."""

    name = WHOAMI

    def add_to_server(self, server: grpc.aio.Server) -> None:
        async def unary(_request: bytes, _context: Any) -> bytes:
            return (caller_identity() or "-").encode()

        async def stream(requests: AsyncIterator[bytes], _context: Any) -> AsyncIterator[bytes]:
            async for _ in requests:
                yield (caller_identity() or "-").encode()

        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.stream_stream_rpc_method_handler(stream),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(WHOAMI, handlers),))

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.yaml"
    path.write_text(TOKENS_YAML)
    return path


@pytest.fixture
async def server(start_server: StartServer, tokens_file: Path) -> RunningServer:
    return await start_server(access_log=True, auth={"tokens_file": tokens_file})


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def ping_error(server: RunningServer, **kwargs: Any) -> grpc.aio.AioRpcError:
    async with AsyncClient(server.address, timeout=5, **{"token": "", **kwargs}) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.ping()
    return info.value


async def test_a_call_without_a_token_is_unauthenticated_and_says_what_to_send(
    server: RunningServer,
) -> None:
    error = await ping_error(server)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == (
        "this server needs a token: send the metadata 'authorization: Bearer <token>' "
        "(visionrpc CLI: --token or VISIONRPC_TOKEN)"
    )
    async with AsyncClient(server.address, token=OPS) as client:  # the server still serves
        assert (await client.ping("ok")).message == "ok"


@pytest.mark.parametrize(
    ("metadata", "details"),
    [
        ((("authorization", "Bearer not-a-known-token"),), auth.UNKNOWN.message),
        ((("authorization", f"Basic {OPS}"),), auth.MALFORMED.message),
        ((("authorization", "Bearer "),), auth.MALFORMED.message),
    ],
)
async def test_unknown_or_malformed_tokens_are_unauthenticated(
    server: RunningServer, metadata: tuple[tuple[str, str]], details: str
) -> None:
    error = await ping_error(server, metadata=metadata)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == details
    assert "not-a-known-token" not in (error.details() or "")


async def test_a_missing_scope_is_permission_denied_naming_the_scope(
    server: RunningServer,
) -> None:
    error = await ping_error(server, token=STATION)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == (
        "/visionrpc.v1.CoreServices/Ping needs the scope 'core'; the token of 'station-7' has "
        "inference: ask for a token with 'core'"
    )
    assert STATION not in (error.details() or "")


async def test_client_sends_the_token_from_the_environment(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VISIONRPC_TOKEN", OPS)
    async with AsyncClient(server.address, timeout=5) as client:
        assert (await client.ping("env")).message == "env"
    error = await ping_error(server)  # token="" sends none, whatever the environment says
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_and_reflection_are_open_without_a_token(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [r async for r in stub.ServerReflectionInfo(iter([request]))]
        names = {s.name for s in replies[0].list_services_response.service}
        assert "visionrpc.v1.CoreServices" in names


async def test_open_services_can_be_closed(start_server: StartServer, tokens_file: Path) -> None:
    server = await start_server(auth={"tokens_file": tokens_file, "open_services": []})
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_servicers_see_the_callers_identity(
    start_server: StartServer, tokens_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(auth.SERVICE_SCOPES, WHOAMI, "inference")
    server = await start_server([WhoAmI()], auth={"tokens_file": tokens_file})
    async with grpc.aio.insecure_channel(server.address) as channel:
        unary = channel.unary_unary(f"/{WHOAMI}/Unary", None, None)
        stream = channel.stream_stream(f"/{WHOAMI}/Stream", None, None)
        assert await unary(b"", metadata=bearer(STATION)) == b"station-7"
        assert await unary(b"", metadata=bearer(OPS)) == b"ops"
        answers = [a async for a in stream(iter([b"", b""]), metadata=bearer(STATION))]
        assert answers == [b"station-7", b"station-7"]


async def test_a_method_without_a_scope_is_refused_to_every_token(
    start_server: StartServer, tokens_file: Path
) -> None:
    server = await start_server([WhoAmI()], auth={"tokens_file": tokens_file})
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(f"/{WHOAMI}/Unary", None, None)(b"", metadata=bearer(OPS))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == (
        f"/{WHOAMI}/Unary belongs to no token scope, so no token may call it"
    )


def test_model_control_methods_map_to_the_models_scope() -> None:
    method = "/visionrpc.v1.InferenceMethods/LoadModel"
    assert auth.required_scope(method) == "models"
    assert auth.required_scope("/visionrpc.v1.InferenceMethods/ListModels") == "inference"
    authenticator = Authenticator(auth.parse_tokens(TOKENS_YAML, "test"), open_services=())
    assert authenticator.check(method, bearer(OPS)) == "ops"
    refusal = authenticator.check(method, bearer(STATION))
    assert isinstance(refusal, auth.Refusal)
    assert refusal.code == grpc.StatusCode.PERMISSION_DENIED
    assert "needs the scope 'models'" in refusal.message


async def test_tokens_never_reach_the_logs(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with AsyncClient(server.address, timeout=5, token=OPS) as client:
        await client.ping()
    for token in (STATION, "unknown-token-value"):
        async with AsyncClient(server.address, timeout=5, token=token) as client:
            with pytest.raises(grpc.RpcError):
                await client.ping()
    access = [r for r in caplog.records if r.name == "visionrpc.access"]
    assert [r.fields["grpc_code"] for r in access] == [  # type: ignore[attr-defined]
        "OK",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
    ]
    assert access[0].fields["identity"] == "ops"  # type: ignore[attr-defined]
    text = "\n".join(
        f"{r.getMessage()} {json.dumps(getattr(r, 'fields', {}), default=str)}"
        for r in caplog.records
    )
    for token in (OPS, STATION, "unknown-token-value"):
        assert token not in text


async def test_tokens_from_the_secret_environment_variable(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    inline = json.dumps([{"name": "line-3", "token": "inline-token", "scopes": ["core"]}])
    monkeypatch.setenv("VISIONRPC_AUTH__TOKENS", inline)
    settings = Settings()
    assert settings.auth.tokens is not None
    assert "inline-token" not in repr(settings)
    server = await start_server(auth={"tokens": settings.auth.tokens})
    async with AsyncClient(server.address, timeout=5, token="inline-token") as client:
        assert (await client.ping("inline")).message == "inline"
    error = await ping_error(server)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read the tokens file {path}: No such file or directory"),
        ("- name: [unclosed", "tokens file {path} is not valid YAML at line 1"),
        ("[]", "the token list is empty, so no call could be made; add a token or unset "
         "auth.tokens_file / auth.tokens"),
        ("- name: a\n  sha256: abc\n  scopes: [core]", "tokens file {path}: entry 1: sha256 "
         "must be 64 hex digits (sha256sum of the token) (expected a list of {{name, sha256 or "
         "token, scopes}})"),
        ("- name: a\n  token: t\n  scopes: [admin]", "tokens file {path}: entry 1 scopes.0: "
         "Input should be 'inference', 'models' or 'core' (expected a list of {{name, sha256 or "
         "token, scopes}})"),
        ("- name: a\n  token: t\n  scopes: [core]\n- name: b\n  token: t\n  scopes: [core]",
         "tokens file {path}: entry 2 (b) repeats a token"),
    ],
)  # fmt: skip
async def test_a_bad_tokens_file_stops_start_up_naming_it(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "tokens.yaml"
    if content is not None:
        path.write_text(content)
    server = VisionServer(make_settings(auth={"tokens_file": path}))
    with pytest.raises(StartupError) as info:
        await server.start()
    assert str(info.value) == expected.format(path=path)
    assert "\n" not in str(info.value)


def test_binding_beyond_loopback_warns_without_tls_and_without_tokens(
    caplog: pytest.LogCaptureFixture, tokens_file: Path
) -> None:
    caplog.set_level(logging.WARNING, "visionrpc.server.app")
    VisionServer(make_settings(host="0.0.0.0"))._load_security()  # checks only; binds nothing
    assert [r.getMessage() for r in caplog.records] == [
        "listening on 0.0.0.0 without TLS: calls and tokens cross the network in plaintext; "
        "set tls.cert_file and tls.key_file (--tls-cert, --tls-key)",
        "listening on 0.0.0.0 without tokens: anyone who reaches the port may call every "
        "method; set auth.tokens_file or auth.tokens",
    ]
    caplog.clear()
    VisionServer(make_settings(host="127.0.0.1"))._load_security()
    VisionServer(make_settings(host="::1"))._load_security()
    secured = VisionServer(make_settings(host="0.0.0.0", auth={"tokens_file": tokens_file}))
    secured._load_security()
    assert [r.getMessage()[:40] for r in caplog.records] == [
        "listening on 0.0.0.0 without TLS: calls "
    ]


def test_the_readme_token_list_example_is_valid() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Tokens and scopes", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    names = [c.name for c in auth.parse_tokens(example, "README")]
    assert names == ["station-7", "ops"]
