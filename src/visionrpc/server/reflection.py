"""Server reflection that resolves every symbol, served as grpc.reflection.v1 and v1alpha.

grpcio-reflection answers ``file_containing_symbol`` with the pool's ``FindFileContainingSymbol``,
which does not know methods (``pkg.Service.Method``) nor enum values named inside their enum
(``pkg.Enum.VALUE``, the names grpcurl asks for), so ``grpcurl describe`` of those fails with
"Symbol not found". ``ReflectionServicer`` keeps grpcio-reflection's servicer and resolves such a
symbol through its parent (service, message or enum) instead.

grpcio-reflection ships only the v1alpha protocol. v1 (what newer grpcurl, Postman and grpc-java
clients try first) has the same messages and field numbers under the package
``grpc.reflection.v1``, so the same handler answers both method paths, and a v1 copy of the
reflection file is added to the pool so that reflection can describe itself under both names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection as _v1alpha
from grpc_reflection.v1alpha import reflection_pb2 as _pb2
from grpc_reflection.v1alpha._async import ReflectionServicer as _AioReflectionServicer
from grpc_reflection.v1alpha._base import _file_descriptor_response, _not_found_error

from visionrpc.server.status import map_errors

V1ALPHA_SERVICE_NAME: str = _v1alpha.SERVICE_NAME
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
V1_FILE_NAME = "grpc_reflection/v1/reflection.proto"
SERVICE_NAMES: tuple[str, ...] = (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
"""Both reflection services; the server lists them and keeps them open while it starts."""

_METHOD = "ServerReflectionInfo"


def find_file_containing_symbol(pool: Any, name: str) -> FileDescriptor:
    """The file that defines ``name``: any type, field, oneof, enum value, method or extension.

    Raises KeyError when no such symbol is in ``pool``.
    """
    with contextlib.suppress(KeyError):
        file: FileDescriptor = pool.FindFileContainingSymbol(name)
        return file
    parent, _, child = name.rpartition(".")
    lookups: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("FindServiceByName", ("methods_by_name",)),
        ("FindEnumTypeByName", ("values_by_name",)),
        (
            "FindMessageTypeByName",
            (
                "fields_by_name",
                "oneofs_by_name",
                "nested_types_by_name",
                "enum_types_by_name",
                "enum_values_by_name",
                "extensions_by_name",
            ),
        ),
    )
    for finder, members in lookups:
        try:
            scope = getattr(pool, finder)(parent)
        except KeyError:
            continue
        if any(child in getattr(scope, member) for member in members):
            found: FileDescriptor = scope.file
            return found
    raise KeyError(name)


class ReflectionServicer(_AioReflectionServicer):  # type: ignore[misc]
    """grpcio-reflection's asyncio servicer with a symbol lookup that finds every symbol."""

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        try:
            file = find_file_containing_symbol(self._pool, fully_qualified_name)
        except KeyError:
            return _not_found_error(request)
        return _file_descriptor_response(file, request)


def _v1_file_proto() -> descriptor_pb2.FileDescriptorProto:
    """The v1alpha reflection file renamed to v1 (the two protocols differ only in the package)."""
    proto = descriptor_pb2.FileDescriptorProto()
    _pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", f".{V1_PACKAGE}."
    proto.name, proto.package = V1_FILE_NAME, V1_PACKAGE
    proto.ClearField("options")  # v1alpha's java/objc package options do not describe v1
    for message in proto.message_type:  # the reflection messages have no nested types
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    return proto


def ensure_v1_descriptor(pool: Any | None = None) -> FileDescriptor:
    """The v1 reflection file in ``pool`` (the default pool), added once.

    A grpcio-reflection that ships v1 itself has already registered it under the same name when
    imported, so its own file is used then.
    """
    pool = descriptor_pool.Default() if pool is None else pool
    with contextlib.suppress(ImportError):
        from grpc_reflection.v1 import reflection_pb2

        v1_file: FileDescriptor = reflection_pb2.DESCRIPTOR
        return v1_file
    try:
        existing: FileDescriptor = pool.FindFileByName(V1_FILE_NAME)
        return existing
    except KeyError:
        added: FileDescriptor = pool.AddSerializedFile(_v1_file_proto().SerializeToString())
        return added


def enable_server_reflection(
    service_names: Iterable[str], server: grpc.aio.Server, pool: Any | None = None
) -> ReflectionServicer:
    """Serve reflection for ``service_names`` (plus both reflection services) on ``server``."""
    ensure_v1_descriptor(pool)
    names = {*service_names, *SERVICE_NAMES}
    servicer = ReflectionServicer(names, pool=pool)
    handler = grpc.stream_stream_rpc_method_handler(
        # through the error map: a request that does not parse is INVALID_ARGUMENT, not UNKNOWN
        map_errors(servicer.ServerReflectionInfo),
        request_deserializer=_pb2.ServerReflectionRequest.FromString,
        response_serializer=_pb2.ServerReflectionResponse.SerializeToString,
    )
    for service in SERVICE_NAMES:
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {_METHOD: handler}),)
        )
    return servicer
