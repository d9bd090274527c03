"""A generic client that knows only what server reflection describes can call all four methods.

Nothing from visionrpc.v1 is imported: message classes are built from the descriptors the server
sends, the way grpcurl or Postman do it.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.helpers import RunningServer

CORE = "visionrpc.v1.CoreServices"


def test_all_four_call_types_through_reflection_only(threaded_server: RunningServer) -> None:
    with grpc.insecure_channel(threaded_server.address) as channel:
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = pool.FindServiceByName(CORE)
        methods = {m.name: m for m in service.methods}

        def callable_for(name: str) -> tuple[Any, Any]:
            method = methods[name]
            request_cls = GetMessageClass(method.input_type)
            response_cls = GetMessageClass(method.output_type)
            kind = {
                (False, False): channel.unary_unary,
                (False, True): channel.unary_stream,
                (True, False): channel.stream_unary,
                (True, True): channel.stream_stream,
            }[(method.client_streaming, method.server_streaming)]
            stub = kind(
                f"/{CORE}/{name}",
                request_serializer=request_cls.SerializeToString,
                response_deserializer=response_cls.FromString,
            )
            return stub, request_cls

        ping, ping_request = callable_for("Ping")
        reply = ping(ping_request(message="reflected"), timeout=10)
        assert reply.message == "reflected" and reply.instance_id

        stream, stream_request = callable_for("StreamNumbers")
        values = [r.value for r in stream(stream_request(start=10, count=3, step=5), timeout=10)]
        assert values == [10, 15, 20]

        upload, number_request = callable_for("UploadNumbers")
        summary = upload(iter([number_request(value=v) for v in (4, -2, 7)]), timeout=10)
        assert (summary.count, summary.sum, summary.min, summary.max) == (3, 9, -2, 7)

        chat, chat_message = callable_for("Chat")
        replies = chat(iter([chat_message(room="r", sender="me", text="hello")]), timeout=10)
        first = next(iter(replies))
        assert (first.room, first.sender, first.text, first.seq) == ("r", "me", "hello", 1)
