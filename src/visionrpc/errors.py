"""Domain errors. Runtime code raises these; only the wire layer maps them to gRPC status codes.

Some carry structured data next to the message (the request field at fault, when a retry may
work); the wire layer sends it as ``google.rpc`` details, so clients can act on it without parsing
text. Messages that echo what the caller sent pass it through :func:`shorten` first: the message
travels in the call's trailers, which clients refuse above a few KiB.
"""

from __future__ import annotations

ECHO_LIMIT = 120
"""Characters of a caller-supplied value an error message repeats (see :func:`shorten`)."""


def shorten(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr``-like text of ``value`` cut to about ``limit`` characters, saying how much was cut.

    Strings are quoted like ``repr`` does, so an empty or odd name stays visible; lists and tuples
    show their first items and how many more there were.
    """
    if isinstance(value, list | tuple):
        shown: list[str] = []
        used = 0
        for item in value:
            text = shorten(item, limit)
            if shown and used + len(text) > limit:
                break
            shown.append(text)
            used += len(text) + 2
        more = len(value) - len(shown)
        tail = f", … {more} more" if more else ""
        return f"[{', '.join(shown)}{tail}]"
    text = repr(value) if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    cut = max(limit - 1, 1)
    return f"{text[:cut]}… ({len(text):,} characters)"


class VisionRPCError(Exception):
    """Base class: the message is shown to the caller, so it says what to change."""


class InvalidInputError(VisionRPCError):
    """The request cannot be served as sent (bad image, bad parameter).

    ``field`` names the request field at fault (its proto name, e.g. ``confidence_threshold``)
    when there is one; clients receive it as a ``BadRequest`` field violation.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ResourceLimitError(VisionRPCError):
    """A limit was hit (image too large, queue full); retrying later or sending less may work.

    ``retry_after_s`` is set when waiting is what helps (a full queue): clients receive it as
    ``RetryInfo``. Unset when only sending less helps (an image over the pixel limit).
    ``limit`` names the setting that refused (``batching.max_queue_size``), so refusals can be
    counted per limit (the ``visionrpc_refused_total`` metric) without parsing messages.
    """

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, limit: str = ""
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.limit = limit


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
