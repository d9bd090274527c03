"""Domain errors. Runtime code raises these; only the wire layer maps them to gRPC status codes."""

from __future__ import annotations


class VisionRPCError(Exception):
    """Base class: the message is shown to the caller, so it says what to change."""


class InvalidInputError(VisionRPCError):
    """The request cannot be served as sent (bad image, bad parameter)."""


class ResourceLimitError(VisionRPCError):
    """A limit was hit (image too large, queue full); retrying later or sending less may work."""


class ModelNotFoundError(VisionRPCError):
    """The request named a model the repository does not hold."""


class ModelLoadError(VisionRPCError):
    """A model file is missing or broken (raised at start-up)."""


class OutOfRangeError(VisionRPCError):
    """A computed value does not fit its field (e.g. an int64 sum)."""


class NotReadyError(VisionRPCError):
    """The server is starting (models loading) or draining; retrying shortly may work."""


class DeadlineExpiredError(VisionRPCError):
    """The caller's deadline passed or it cancelled the call: the request's work was stopped."""
