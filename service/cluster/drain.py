"""The drain's pace and how long it may take (pure numbers: service/server.py reads them in
gunicorn's master, before the worker's gevent patching, to size its graceful timeout)."""

from __future__ import annotations

import math

#: Sockets closed per drain batch, and the pause between batches: 2,000 sockets a second,
#: so the reconnects of a full frontend reach its peers spread over ~10 s, not at once.
DRAIN_BATCH = 100
DRAIN_PAUSE_S = 0.05
#: Upper bound of the jittered reconnect hint sent with 1012, milliseconds.
DRAIN_JITTER_MS = 2000
#: How long a drain waits for clients to go before exiting anyway.
DRAIN_WAIT_S = 10.0
#: How long a drain waits for the registry writer to land what the closes queued.
DRAIN_FLUSH_S = 5.0


def drain_seconds(sockets: int) -> float:
    """The longest a drain of ``sockets`` can take: the pauses between its batches, the
    wait for clients to go and the registry flush (service/server.py sizes gunicorn's
    graceful timeout, and compose/k8s their grace periods, from it)."""
    return math.ceil(sockets / DRAIN_BATCH) * DRAIN_PAUSE_S + DRAIN_WAIT_S + DRAIN_FLUSH_S
