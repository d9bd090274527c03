"""ModelStreamInfer and ModelStatistics behind the server's door like every other method: a token
needs the ``inference`` scope for them, and reflection describes them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from tests.helpers import RunningServer, StartThreadedServer, make_settings
from tests.runtime.onnx_builders import tiny_models
from tests.server.drain_helpers import JPEG
from tests.server.test_reflection import V1, ask, files
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.oip import OpenInferenceServicer
from visionrpc.v1 import grpc_service_pb2 as oip
from visionrpc.v1 import grpc_service_pb2_grpc

CORE_ONLY = "core-only-secret-token"
INFERENCE = "inference-secret-token"
TOKENS_YAML = f"""
- name: dashboard
  token: {CORE_ONLY}
  scopes: [core]
- name: station
  token: {INFERENCE}
  scopes: [inference]
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def running(
    start_threaded_server: StartThreadedServer, models: Path, tmp_path: Path
) -> RunningServer:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(TOKENS_YAML)
    overrides = {"models_dir": models, "access_log": False, "auth": {"tokens_file": tokens}}
    inference = InferenceServicer(make_settings(**overrides))
    return start_threaded_server([inference, OpenInferenceServicer(inference)], **overrides)


@pytest.fixture
def channel(running: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(running.address) as ch:
        yield ch


def stream_request() -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="tiny", id="1")
    request.inputs.add(name="IMAGE", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        JPEG
    )
    return request


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_a_token_without_the_inference_scope_is_refused(channel: grpc.Channel) -> None:
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    calls = {
        "ModelStatistics": lambda: stub.ModelStatistics(
            oip.ModelStatisticsRequest(), metadata=bearer(CORE_ONLY), timeout=10
        ),
        "ModelStreamInfer": lambda: list(
            stub.ModelStreamInfer(iter([stream_request()]), metadata=bearer(CORE_ONLY), timeout=10)
        ),
    }
    for method, call in calls.items():
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        assert refused.value.details() == (  # type: ignore[attr-defined]
            f"/inference.GRPCInferenceService/{method} needs the scope 'inference'; the token of "
            "'dashboard' has core: ask for a token with 'inference'"
        )
    # the token with the scope gets answers
    stats = stub.ModelStatistics(oip.ModelStatisticsRequest(), metadata=bearer(INFERENCE))
    assert [m.name for m in stats.model_stats] == ["tiny"]
    (answer,) = stub.ModelStreamInfer(iter([stream_request()]), metadata=bearer(INFERENCE))
    assert (answer.error_message, answer.infer_response.id) == ("", "1")


def test_reflection_describes_the_new_methods(channel: grpc.Channel) -> None:
    request = rpb.ServerReflectionRequest(
        file_containing_symbol="inference.GRPCInferenceService.ModelStreamInfer"
    )
    (reply,) = ask(channel, V1, request)
    (service,) = files(reply)["visionrpc/v1/grpc_service.proto"].service
    methods = {m.name: m for m in service.method}
    stream = methods["ModelStreamInfer"]
    assert (stream.client_streaming, stream.server_streaming) == (True, True)
    assert stream.output_type == ".inference.ModelStreamInferResponse"
    assert methods["ModelStatistics"].output_type == ".inference.ModelStatisticsResponse"
