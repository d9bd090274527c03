"""Server reflection over both protocol names, with a raw client (what grpcurl and Postman send).

The v1 protocol (grpc.reflection.v1) has the v1alpha messages under another package, so this
client sends grpcio-reflection's v1alpha messages on either method path.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from tests.helpers import RunningServer
from visionrpc.server.reflection import enable_server_reflection, find_file_containing_symbol

V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]


def ask(
    channel: grpc.Channel, path: str, *requests: rpb.ServerReflectionRequest
) -> list[rpb.ServerReflectionResponse]:
    """Send ``requests`` on one reflection stream and return the answers, in order."""
    stream = channel.stream_stream(
        path,
        request_serializer=rpb.ServerReflectionRequest.SerializeToString,
        response_deserializer=rpb.ServerReflectionResponse.FromString,
    )
    return list(stream(iter(requests), timeout=10))


def files(response: rpb.ServerReflectionResponse) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    out = {}
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        out[proto.name] = proto
    return out


@pytest.fixture
def channel(threaded_server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(threaded_server.address) as ch:
        yield ch


@pytest.mark.parametrize("path", [V1, V1ALPHA])
def test_both_protocols_list_the_same_services(channel: grpc.Channel, path: str) -> None:
    (reply,) = ask(channel, path, rpb.ServerReflectionRequest(list_services=""))
    assert [s.name for s in reply.list_services_response.service] == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "visionrpc.v1.CoreServices",
    ]


@pytest.mark.parametrize("path", [V1, V1ALPHA])
def test_a_method_symbol_resolves_to_its_file(channel: grpc.Channel, path: str) -> None:
    request = rpb.ServerReflectionRequest(file_containing_symbol="visionrpc.v1.CoreServices.Ping")
    (reply,) = ask(channel, path, request)
    assert reply.original_request == request
    found = files(reply)
    assert set(found) == {"visionrpc/v1/core.proto", "google/protobuf/timestamp.proto"}
    (service,) = found["visionrpc/v1/core.proto"].service
    assert [m.name for m in service.method] == ["Ping", "StreamNumbers", "UploadNumbers", "Chat"]


def test_v1_describes_itself_under_its_own_package(channel: grpc.Channel) -> None:
    request = rpb.ServerReflectionRequest(
        file_containing_symbol="grpc.reflection.v1.ServerReflection.ServerReflectionInfo"
    )
    (reply,) = ask(channel, V1, request)
    (proto,) = files(reply).values()
    assert proto.package == "grpc.reflection.v1"
    (method,) = proto.service[0].method
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert method.output_type == ".grpc.reflection.v1.ServerReflectionResponse"
    response = next(m for m in proto.message_type if m.name == "ServerReflectionResponse")
    assert {f.type_name for f in response.field if f.type_name} == {
        f".grpc.reflection.v1.{name}"
        for name in (
            "ServerReflectionRequest",
            "FileDescriptorResponse",
            "ExtensionNumberResponse",
            "ListServiceResponse",
            "ErrorResponse",
        )
    }


def test_unknown_symbols_are_not_found_and_the_stream_keeps_answering(
    channel: grpc.Channel,
) -> None:
    unknown, ping, bad_file, by_name = ask(
        channel,
        V1,
        rpb.ServerReflectionRequest(file_containing_symbol="visionrpc.v1.CoreServices.Nope"),
        rpb.ServerReflectionRequest(file_containing_symbol="visionrpc.v1.CoreServices.Ping"),
        rpb.ServerReflectionRequest(file_by_filename="visionrpc/v1/nope.proto"),
        rpb.ServerReflectionRequest(file_by_filename="visionrpc/v1/core.proto"),
    )
    assert unknown.error_response.error_code == NOT_FOUND
    assert "visionrpc/v1/core.proto" in files(ping)
    assert bad_file.error_response.error_code == NOT_FOUND
    assert "visionrpc/v1/core.proto" in files(by_name)


def test_extension_numbers_of_a_message_without_extensions(channel: grpc.Channel) -> None:
    numbers, unknown = ask(
        channel,
        V1,
        rpb.ServerReflectionRequest(all_extension_numbers_of_type="visionrpc.v1.PingRequest"),
        rpb.ServerReflectionRequest(all_extension_numbers_of_type="visionrpc.v1.Nope"),
    )
    assert numbers.all_extension_numbers_response.base_type_name == "visionrpc.v1.PingRequest"
    assert list(numbers.all_extension_numbers_response.extension_number) == []
    assert unknown.error_response.error_code == NOT_FOUND


def _pool_with_an_extension() -> descriptor_pool.DescriptorPool:
    """A pool whose ``ext.v1.tag`` (50001) extends google.protobuf.MessageOptions."""
    pool = descriptor_pool.DescriptorPool()
    descriptor_file = descriptor_pb2.FileDescriptorProto()
    descriptor_pb2.DESCRIPTOR.CopyToProto(descriptor_file)
    pool.Add(descriptor_file)
    ext = descriptor_pb2.FileDescriptorProto(
        name="ext/v1/ext.proto",
        package="ext.v1",
        dependency=["google/protobuf/descriptor.proto"],
        syntax="proto3",
    )
    ext.extension.add(
        name="tag",
        number=50001,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        extendee=".google.protobuf.MessageOptions",
        json_name="tag",
    )
    ext.message_type.add(name="Tagged").enum_type.add(name="Kind").value.add(
        name="KIND_A", number=0
    )
    pool.Add(ext)
    return pool


async def test_extension_queries_and_symbols_of_another_pool() -> None:
    pool = _pool_with_an_extension()
    server = grpc.aio.server()
    enable_server_reflection(["ext.v1.Nothing"], server, pool=pool)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = channel.stream_stream(
                V1,
                request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                response_deserializer=rpb.ServerReflectionResponse.FromString,
            )
            requests = [
                rpb.ServerReflectionRequest(
                    all_extension_numbers_of_type="google.protobuf.MessageOptions"
                ),
                rpb.ServerReflectionRequest(
                    file_containing_extension=rpb.ExtensionRequest(
                        containing_type="google.protobuf.MessageOptions", extension_number=50001
                    )
                ),
                rpb.ServerReflectionRequest(file_containing_symbol="ext.v1.Tagged.Kind.KIND_A"),
                rpb.ServerReflectionRequest(file_containing_symbol="ext.v1.tag"),
            ]
            numbers, by_extension, enum_value, extension = [r async for r in stream(iter(requests))]
    finally:
        await server.stop(0)
    assert list(numbers.all_extension_numbers_response.extension_number) == [50001]
    for reply in (by_extension, enum_value, extension):
        assert set(files(reply)) == {"ext/v1/ext.proto", "google/protobuf/descriptor.proto"}


@pytest.mark.parametrize(
    ("symbol", "file"),
    [
        ("ext.v1.Tagged", "ext/v1/ext.proto"),
        ("ext.v1.Tagged.Kind", "ext/v1/ext.proto"),
        ("ext.v1.Tagged.KIND_A", "ext/v1/ext.proto"),  # protobuf's scope: the enum's parent
        ("ext.v1.Tagged.Kind.KIND_A", "ext/v1/ext.proto"),  # grpcurl's: inside the enum
        ("google.protobuf.FieldOptions.CType.STRING", "google/protobuf/descriptor.proto"),
        (
            "google.protobuf.DescriptorProto.ExtensionRange.start",
            "google/protobuf/descriptor.proto",
        ),
    ],
)
def test_find_file_containing_symbol(symbol: str, file: str) -> None:
    assert find_file_containing_symbol(_pool_with_an_extension(), symbol).name == file


@pytest.mark.parametrize("symbol", ["ext.v1.Nope", "ext.v1.Tagged.Kind.KIND_B", "ext.v1.Tagged.x"])
def test_find_file_containing_symbol_unknown(symbol: str) -> None:
    with pytest.raises(KeyError):
        find_file_containing_symbol(_pool_with_an_extension(), symbol)
