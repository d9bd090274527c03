"""Who is calling: the name of the token the current call authenticated with.

The interceptor sets :data:`CALLER` for each call that presented a valid token, in the task that
then runs the servicer, so servicers (and per-client limits) read it without a parameter.
"""

from __future__ import annotations

from contextvars import ContextVar

CALLER: ContextVar[str | None] = ContextVar("visionrpc_caller", default=None)
"""Name of the authenticated token of the current call; None when tokens are off or the service
is open (health, reflection)."""


def caller_identity() -> str | None:
    """The current call's authenticated identity (a token's ``name``), or None."""
    return CALLER.get()
