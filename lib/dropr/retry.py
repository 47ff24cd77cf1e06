"""Retry and death: the one backoff formula, and why a message goes dead.

Everything that retries uses ``backoff``: the sender between tries of a failing
peer, the consumer between runs of a failing handler, the angel between starts of
its child. Each passes its own base, cap and jitter; the formula is shared.

No imports at the top: consume (dropr-recv, dropr-ack) and the spool load this
module at start-up.
"""

from __future__ import annotations

DOUBLINGS = 64  # the delay stops doubling here: far past any cap, and 2.0 ** n stays a
# float whatever count a record holds (a count of 1024 overflowed it after a crash loop)


def backoff(n: int, base: float, cap: float, jitter: float = 0.0) -> float:
    """Return base doubled n times, at most cap, times a random factor in [1 - jitter, 1]."""
    delay = min(cap, base * 2.0 ** min(max(n, 0), DOUBLINGS))
    if jitter:
        import random

        delay *= random.uniform(1.0 - jitter, 1.0)
    return delay


# -- why a message goes dead --------------------------------------------------------------------
# Each reason is written to the message's record ("error": dropr-ls and dropr-put --wait
# show it); the *_LOG words are the reason= of the "dead id=..." log line.

# outbox (dropr-send)
TTL_EXPIRED = "ttl expired before delivery"  # its TTL passed while it was queued
TTL_EXPIRED_LOG = "ttl expired"
MAX_ATTEMPTS = "gave up after {} attempts"  # .format(attempts): send.max_attempts reached
MAX_ATTEMPTS_LOG = "max attempts"
REFUSED = "refused by peer: {}"  # .format(the peer's reason): the peer will never store it
DEAD_AT_PEER = "dead at peer: {}"  # .format(the peer's reason): stored there, then given up
RECEIPT_LOST = "receipt lost: the peer no longer knows it (purged there, or its spool was lost)"
RECEIPT_LOST_LOG = "receipt lost"

# inbox (dropr-recv, dropr-ack, the handlers)
REJECTED = "rejected"  # dropr-ack --reject without a reason
OUT_OF_ATTEMPTS = "{} (attempt {} of {})"  # .format(why, attempt, max_attempts): a handler's last failure
LEASE_EXPIRED = "lease expired"  # a claim not acked in time (back to ready, or dead:)
LEASE_EXPIRED_DEAD = "lease expired (out of attempts)"

# -- why a message is tried again (not dead) ----------------------------------------------------
PEER_RETRY = "peer asked to retry"  # the peer answered retry without a reason
NO_ANSWER = "no answer for this message"  # the peer's answer left this message out
HANDLER_RETRY = "handler asked to retry (exit 75)"
