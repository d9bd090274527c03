"""Bearer tokens with scopes: who may call which group of methods.

A token list (``auth.tokens_file`` and/or the secret ``auth.tokens``) names each token's identity
and scopes. Each call's ``authorization: Bearer <token>`` metadata is hashed with SHA-256 and
compared, in constant time, with every known digest; the token itself is never stored (when given
as ``sha256``), logged or echoed. The interceptor asks :meth:`Authenticator.check` once per call.

Scopes name method groups, not methods, so that a new method joins a group by where it lives:
:data:`SERVICE_SCOPES` maps whole services, :data:`METHOD_SCOPES` overrides single methods (model
control methods go to ``models``). A method in neither is refused to every token (fail closed).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import grpc
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from visionrpc.errors import VisionRPCError
from visionrpc.settings import AuthSettings

Scope = Literal["inference", "models", "core"]
SCOPES: tuple[str, ...] = get_args(Scope)

SERVICE_SCOPES: dict[str, Scope] = {
    "visionrpc.v1.InferenceMethods": "inference",
    "visionrpc.v1.CoreServices": "core",
    "inference.GRPCInferenceService": "inference",  # all of it, ServerLive/Ready included
}
"""The scope a token needs for every method of a service."""

METHOD_SCOPES: dict[str, Scope] = {
    "/visionrpc.v1.InferenceMethods/LoadModel": "models",
    "/visionrpc.v1.InferenceMethods/ReloadModel": "models",
    "/visionrpc.v1.InferenceMethods/UnloadModel": "models",
    "/inference.GRPCInferenceService/RepositoryModelLoad": "models",
    "/inference.GRPCInferenceService/RepositoryModelUnload": "models",
}
"""Per-method exceptions to SERVICE_SCOPES, by full method name (``/package.Service/Method``):
model control (load, reload, unload) needs ``models``; listing the repository stays in its
service's scope, as a reader of the models may want to know what is served."""

HEADER = "authorization"
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


class AuthConfigError(VisionRPCError):
    """The token list cannot be used; the message names the file or variable and the entry."""


class TokenEntry(BaseModel):
    """One entry of the token list: ``name``, ``sha256`` or ``token``, ``scopes``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    token: SecretStr | None = None
    sha256: str | None = None
    scopes: list[Scope] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_secret(self) -> TokenEntry:
        if (self.token is None) == (self.sha256 is None):
            raise ValueError("give exactly one of sha256 (hex digest of the token) or token")
        if self.sha256 is not None and not _SHA256_HEX.fullmatch(self.sha256):
            raise ValueError("sha256 must be 64 hex digits (sha256sum of the token)")
        if self.token is not None and not self.token.get_secret_value().strip():
            raise ValueError("token must not be empty")
        return self

    def digest(self) -> bytes:
        if self.sha256 is not None:
            return bytes.fromhex(self.sha256)
        assert self.token is not None
        return token_digest(self.token.get_secret_value())


_ENTRIES = TypeAdapter(list[TokenEntry])


@dataclass(frozen=True)
class Credential:
    """A known token: its SHA-256 digest, the identity it stands for and its scopes."""

    digest: bytes
    name: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class Refusal:
    """Why a call is refused: the status code and a message saying what to send."""

    code: grpc.StatusCode
    message: str


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.strip().encode()).digest()


def parse_tokens(text: str, source: str) -> list[Credential]:
    """The token list in ``text`` (YAML or JSON: a list of entries); ``source`` names it in
    errors, which never quote a token."""
    try:
        raw: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise AuthConfigError(f"{source} is not valid YAML{where}") from None
    if raw is None:
        raw = []
    if isinstance(raw, dict) and set(raw) == {"tokens"}:
        raw = raw["tokens"] or []
    try:
        entries = _ENTRIES.validate_python(raw)
    except ValidationError as exc:
        error = exc.errors(include_input=False)[0]
        loc = error["loc"]
        where = f"entry {int(loc[0]) + 1}" if loc and isinstance(loc[0], int) else "the list"
        field = ".".join(str(part) for part in loc[1:])
        message = str(error["msg"]).removeprefix("Value error, ")
        raise AuthConfigError(
            f"{source}: {where}{' ' + field if field else ''}: {message} "
            "(expected a list of {name, sha256 or token, scopes})"
        ) from None
    credentials: list[Credential] = []
    for index, entry in enumerate(entries, start=1):
        digest = entry.digest()
        if any(hmac.compare_digest(digest, known.digest) for known in credentials):
            raise AuthConfigError(f"{source}: entry {index} ({entry.name}) repeats a token")
        credentials.append(Credential(digest, entry.name, frozenset(entry.scopes)))
    return credentials


def load_credentials(settings: AuthSettings) -> list[Credential]:
    """Every token of ``auth.tokens_file`` and ``auth.tokens``; an error names where it is."""
    credentials: list[Credential] = []
    if settings.tokens_file is not None:
        path = Path(settings.tokens_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise AuthConfigError(f"cannot read the tokens file {path}: {reason}") from None
        credentials += parse_tokens(text, f"tokens file {path}")
    if settings.tokens is not None:
        extra = parse_tokens(settings.tokens.get_secret_value(), "auth.tokens")
        for credential in extra:
            if any(hmac.compare_digest(credential.digest, c.digest) for c in credentials):
                raise AuthConfigError(
                    f"auth.tokens: {credential.name} repeats a token of the tokens file"
                )
        credentials += extra
    return credentials


def required_scope(method: str) -> str | None:
    """The scope ``method`` (``/package.Service/Method``) needs; None: no token may call it."""
    scope = METHOD_SCOPES.get(method)
    if scope is None:
        scope = SERVICE_SCOPES.get(method.lstrip("/").rpartition("/")[0])
    return scope


MISSING = Refusal(
    grpc.StatusCode.UNAUTHENTICATED,
    "this server needs a token: send the metadata 'authorization: Bearer <token>' "
    "(visionrpc CLI: --token or VISIONRPC_TOKEN)",
)
MALFORMED = Refusal(
    grpc.StatusCode.UNAUTHENTICATED,
    "the authorization metadata must read 'Bearer <token>'",
)
UNKNOWN = Refusal(
    grpc.StatusCode.UNAUTHENTICATED,
    "the token sent is not one this server knows; send a token from the server's token list",
)


class Authenticator:
    """Decides, per call, which identity is calling and whether its scopes allow the method."""

    def __init__(self, credentials: Sequence[Credential], open_services: Iterable[str]) -> None:
        self._credentials = tuple(credentials)
        self.open_services = frozenset(open_services)

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> Authenticator | None:
        """The authenticator of ``settings``; None when no token is configured (all open)."""
        if settings.tokens_file is None and settings.tokens is None:
            return None
        credentials = load_credentials(settings)
        if not credentials:
            raise AuthConfigError(
                "the token list is empty, so no call could be made; add a token or unset "
                "auth.tokens_file / auth.tokens"
            )
        return cls(credentials, settings.open_services)

    def check(self, method: str, metadata: Sequence[tuple[str, Any]] | None) -> str | Refusal:
        """The caller's identity name when it may call ``method``, else why not."""
        value = None
        for key, item in metadata or ():
            if key == HEADER:
                value = item
                break
        if value is None:
            return MISSING
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        scheme, _, token = str(value).strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return MALFORMED
        digest = token_digest(token)
        found: Credential | None = None
        for credential in self._credentials:  # every entry, so the time does not tell which
            if hmac.compare_digest(digest, credential.digest):
                found = credential
        if found is None:
            return UNKNOWN
        scope = required_scope(method)
        if scope is None:
            return Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} belongs to no token scope, so no token may call it",
            )
        if scope not in found.scopes:
            return Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} needs the scope '{scope}'; the token of '{found.name}' has "
                f"{', '.join(sorted(found.scopes))}: ask for a token with '{scope}'",
            )
        return found.name
