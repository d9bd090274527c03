"""What bounds one request's work: when it must stop, and handing memory back after a large one.

The runtime never sees gRPC: the servicer turns the call's deadline into a ``Deadline`` (a
``time.monotonic()`` instant) and marks it cancelled when the call ends early; the pipeline adds
the server's own time budget (``limits.max_request_seconds``) and calls ``check`` at each stage
boundary. A check is one clock read and a compare, so the request path stays cheap; work inside a
stage (one decode, one model call) is not interrupted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from visionrpc.errors import DeadlineExpiredError, ResourceLimitError

BUDGET_SETTING = "limits.max_request_seconds (VISIONRPC_LIMITS__MAX_REQUEST_SECONDS)"


@dataclass(eq=False)
class Deadline:
    """When one request's work must stop: its caller's deadline, its cancellation, or the
    server's time budget, whichever comes first."""

    caller_at: float | None = None  # time.monotonic() when the caller stops waiting
    budget_at: float | None = None  # time.monotonic() when the server's budget runs out
    budget_s: float = 0.0
    cancelled: bool = False
    stops: Counter[str] | None = field(default=None, repr=False)  # per-stage stop counts

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        """A deadline ``seconds`` from now (None: the caller waits for ever)."""
        return cls(None if seconds is None else time.monotonic() + seconds)

    def cancel(self) -> None:
        """The caller is gone: the next check stops the work."""
        self.cancelled = True

    def start_budget(self, seconds: float, stops: Counter[str] | None = None) -> None:
        """Start the server's own time budget (0: none) and where stops are counted."""
        if seconds > 0:
            self.budget_s = seconds
            self.budget_at = time.monotonic() + seconds
        self.stops = stops

    def check(self, stage: str) -> None:
        """Raise if the work must stop now; ``stage`` says where (e.g. "before the model call")."""
        if self.cancelled:
            self._stop(stage, DeadlineExpiredError(f"the call was cancelled; stopped {stage}"))
        if self.caller_at is None and self.budget_at is None:
            return
        now = time.monotonic()
        if self.caller_at is not None and now >= self.caller_at:
            self._stop(
                stage,
                DeadlineExpiredError(
                    f"the call's deadline passed; the server stopped its work {stage}. Send a "
                    "longer deadline (timeout) or a smaller image"
                ),
            )
        if self.budget_at is not None and now >= self.budget_at:
            self._stop(
                stage,
                ResourceLimitError(
                    f"the request took longer than the server's time budget of {self.budget_s:g} "
                    f"s ({BUDGET_SETTING}) and was stopped {stage}; send a smaller image, fewer "
                    "detections or no masks, or retry when the server is less busy",
                    limit="limits.max_request_seconds",
                ),
            )

    def _stop(self, stage: str, error: Exception) -> None:
        if self.stops is not None:
            self.stops[stage] += 1
        raise error


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (not Linux, or a libc without it such as musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def trim_memory() -> bool:
    """Hand freed heap memory back to the OS; False where that is not available.

    Why: after a large request glibc keeps the freed pages of its heap (large numpy buffers land
    there once its dynamic mmap threshold has grown), so RSS stays high long after the request.
    """
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
