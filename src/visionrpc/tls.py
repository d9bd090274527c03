"""PEM files for TLS, read and checked with the ``ssl`` module before gRPC sees them.

gRPC accepts any bytes as a certificate and fails later, at the first handshake, with a line from
its C core that names no file. Checking the files here turns a wrong path, a key that does not
match its certificate or a file that is not PEM into one line naming the file, at start-up (server)
or when the client is built. Shared by the server, the client and the container health probe, so it
imports only the standard library and grpc.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import grpc

from visionrpc.errors import VisionRPCError

StrPath = str | os.PathLike[str]


class TlsFileError(VisionRPCError, ValueError):
    """A certificate, key or CA file is missing or unusable; the message names the file."""


def read_file(path: StrPath, what: str) -> bytes:
    """The bytes of ``path``; a missing or unreadable file is a :class:`TlsFileError`."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsFileError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def read_ca(path: StrPath, what: str = "CA file") -> bytes:
    """PEM CA certificates from ``path``, checked to be certificates."""
    data = read_file(path, what)
    try:
        ssl.create_default_context(cadata=data.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError):
        raise TlsFileError(f"the {what} {path} holds no PEM certificate") from None
    return data


def read_cert_key(cert: StrPath, key: StrPath, what: str = "certificate") -> tuple[bytes, bytes]:
    """(certificate chain, private key) PEM bytes, checked to be PEM and to belong together."""
    cert_pem = read_file(cert, f"{what} file")
    key_what = what.replace("certificate", "key")
    key_pem = read_file(key, f"{key_what} file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        # a password callback, so that an encrypted key fails instead of prompting on the terminal
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        reason = str(getattr(exc, "reason", "") or exc).upper()
        if "KEY_VALUES_MISMATCH" in reason:
            message = f"the key {key} does not belong to the {what} {cert}"
        elif _looks_like_cert(cert_pem):
            message = f"the {key_what} file {key} holds no unencrypted PEM private key"
        else:
            message = f"the {what} file {cert} holds no PEM certificate"
        raise TlsFileError(message) from None
    except OSError as exc:  # the file changed between the two reads
        raise TlsFileError(f"cannot read the {what} file {cert}: {exc.strerror or exc}") from None
    return cert_pem, key_pem


def channel_credentials(
    ca_file: StrPath | None = None,
    cert_file: StrPath | None = None,
    key_file: StrPath | None = None,
) -> grpc.ChannelCredentials:
    """Client TLS credentials: the CA file's roots (none: the system roots) and, for mTLS, a
    client certificate and key (both or neither)."""
    if (cert_file is None) != (key_file is None):
        given, missing = ("certificate", "key") if key_file is None else ("key", "certificate")
        raise TlsFileError(f"a client {given} file needs its client {missing} file too")
    roots = read_ca(ca_file) if ca_file is not None else None
    chain = key = None
    if cert_file is not None and key_file is not None:
        chain, key = read_cert_key(cert_file, key_file, "client certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=key, certificate_chain=chain
    )


def _looks_like_cert(data: bytes) -> bool:
    return b"-----BEGIN CERTIFICATE-----" in data
