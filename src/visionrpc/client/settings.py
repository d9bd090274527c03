"""Client defaults from the environment, kept apart from the server's settings.

A client on an inspection station reads only these variables; the server's (port, models,
runtime...) never reach it, so a stray server variable cannot break a client. The TLS switch is
``VISIONRPC_USE_TLS`` (not ``VISIONRPC_TLS``, which is the server's ``tls`` settings group).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClientSettings(BaseSettings):
    """``VISIONRPC_TARGET``, ``VISIONRPC_TIMEOUT_S``, TLS and token; constructor arguments win."""

    model_config = SettingsConfigDict(env_prefix="VISIONRPC_", extra="ignore")

    target: str = Field("127.0.0.1:50051", description="Server address host:port.")
    timeout_s: float = Field(30.0, gt=0, description="Default deadline of a call, in seconds.")
    use_tls: bool = Field(
        False,
        description="Connect with TLS; implied by ca_file, client_cert_file or client_key_file. "
        "Without ca_file the system's root certificates verify the server.",
    )
    ca_file: Path | None = Field(
        None, description="PEM CA certificates that verify the server (instead of system roots)."
    )
    client_cert_file: Path | None = Field(
        None, description="PEM client certificate, for servers that require one (mTLS)."
    )
    client_key_file: Path | None = Field(None, description="PEM private key of client_cert_file.")
    server_name: str = Field(
        "",
        description="Name the server's certificate must carry, when it differs from the target's "
        "host (e.g. dialing an IP address).",
    )
    token: SecretStr | None = Field(
        None, description="Bearer token sent with every call (authorization metadata)."
    )
