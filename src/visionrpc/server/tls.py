"""Server TLS credentials whose certificate files are re-read when they change.

grpcio's dynamic server credentials ask a fetcher for the certificate configuration at each new
TLS handshake. :class:`ServerCertificates` answers from the files' stat (cheap) and re-reads them
only when that changed, so a renewed certificate (cert-manager, certbot, a hand copy) reaches new
connections without a restart; connections already open keep theirs. A half-written or
mismatched pair is not served: the current one stays, with one warning per change.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import grpc

from visionrpc.settings import TlsSettings
from visionrpc.tls import TlsFileError, read_ca, read_cert_key

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int] | None, ...]
Pems = tuple[bytes, bytes, bytes | None]


def tls_problem(tls: TlsSettings) -> str | None:
    """What is wrong with the combination of TLS settings, or None."""
    if (tls.cert_file is None) != (tls.key_file is None):
        given, missing = (
            ("tls.cert_file (--tls-cert)", "tls.key_file (--tls-key)")
            if tls.key_file is None
            else ("tls.key_file (--tls-key)", "tls.cert_file (--tls-cert)")
        )
        return f"{given} is set but {missing} is not; TLS needs both"
    if tls.client_ca_file is not None and tls.cert_file is None:
        return "tls.client_ca_file (--tls-client-ca) needs TLS: set tls.cert_file and tls.key_file"
    return None


class ServerCertificates:
    """The PEM files of one TLS configuration, read now and again whenever they change."""

    def __init__(self, tls: TlsSettings) -> None:
        if tls.cert_file is None or tls.key_file is None:
            raise ValueError("ServerCertificates needs tls.cert_file and tls.key_file")
        self._paths: tuple[Path, ...] = tuple(
            Path(p) for p in (tls.cert_file, tls.key_file, tls.client_ca_file) if p is not None
        )
        self.mutual = tls.client_ca_file is not None
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._pems = self._read()  # raises TlsFileError: start-up stops with its message

    def _stat(self) -> Stamp:
        stamps: list[tuple[int, int, int] | None] = []
        for path in self._paths:
            try:
                st = os.stat(path)
            except OSError:
                stamps.append(None)
            else:
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def _read(self) -> Pems:
        cert, key = read_cert_key(self._paths[0], self._paths[1])
        ca = read_ca(self._paths[2], "client CA file") if self.mutual else None
        return cert, key, ca

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        cert, key, ca = self._pems
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.configuration(),
            self.fetch,  # type: ignore[arg-type]  # grpc-stubs: None (keep the current) is allowed
            require_client_authentication=self.mutual,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher: a new configuration when the files changed, else None (keep)."""
        try:
            stamp = self._stat()
            with self._lock:
                if stamp == self._stamp:
                    return None
                self._stamp = stamp
                try:
                    pems = self._read()
                except TlsFileError as exc:
                    log.warning("TLS files changed but cannot be used (%s); keeping the old", exc)
                    return None
                if pems == self._pems:
                    return None
                self._pems = pems
            log.info("TLS files changed; new connections get the certificate in %s", self._paths[0])
            return self.configuration()
        except Exception:  # never let an exception reach gRPC's handshake
            log.exception("re-reading the TLS files failed; keeping the current certificate")
            return None


def server_credentials(tls: TlsSettings) -> tuple[grpc.ServerCredentials | None, bool]:
    """(credentials, mutual) for ``tls``; (None, False) when TLS is off.

    A bad combination of settings or an unusable file raises :class:`TlsFileError`.
    """
    problem = tls_problem(tls)
    if problem:
        raise TlsFileError(problem)
    if tls.cert_file is None:
        return None, False
    certificates = ServerCertificates(tls)
    return certificates.credentials(), certificates.mutual
