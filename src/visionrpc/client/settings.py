"""Client defaults from the environment, kept apart from the server's settings.

A client on an inspection station reads only these two variables; the server's (port, models,
runtime...) never reach it, so a stray server variable cannot break a client.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClientSettings(BaseSettings):
    """``VISIONRPC_TARGET`` and ``VISIONRPC_TIMEOUT_S``; constructor arguments win over them."""

    model_config = SettingsConfigDict(env_prefix="VISIONRPC_", extra="ignore")

    target: str = Field("127.0.0.1:50051", description="Server address host:port.")
    timeout_s: float = Field(30.0, gt=0, description="Default deadline of a call, in seconds.")
