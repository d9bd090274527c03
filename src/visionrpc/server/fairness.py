"""Who a call belongs to, for the per-client limits (``Settings.fairness``).

Every per-client limit is keyed through :func:`client_key`: the calls and stream frames a client
has in flight (``max_in_flight_per_client``, here), its share of each model's queue
(``max_queue_per_client``, in the batcher) and its images being decoded at once (the pipeline).
"""

from __future__ import annotations

from visionrpc.errors import ResourceLimitError
from visionrpc.runtime.batching import RETRY_AFTER_S
from visionrpc.server.identity import caller_identity
from visionrpc.server.status import Context


def client_key(context: Context) -> str:
    """The key a call's per-client limits are counted under: the authenticated identity (a
    token's name) when tokens are on, so that one token's connections share one set of limits;
    otherwise the connection (peer).

    Call it when the call starts: grpcio crashes on ``peer()`` of a call that was already
    cancelled.
    """
    identity = caller_identity()
    return f"token:{identity}" if identity is not None else context.peer()


def in_flight_refusal(held: int, limit: int) -> ResourceLimitError:
    """What a unary call gets when its client already has ``limit`` calls and frames in flight."""
    return ResourceLimitError(
        f"this client already has {held} calls and stream frames in flight "
        f"(fairness.max_in_flight_per_client={limit}); wait for answers before sending more",
        retry_after_s=RETRY_AFTER_S,
        limit="fairness.max_in_flight_per_client",
    )
