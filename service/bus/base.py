"""What every bus backend offers: publish bytes to every frontend or to those bound to a
routing key, and listen for them.

A backend knows nothing of envelopes: it carries opaque bodies. Publishing is one call
that raises ``BusError`` (or the transport's own errors, listed in ``BROKER_ERRORS``) when
the broker is away; ``route=""`` is the fanout (every subscription), any other key reaches
only the subscriptions bound to it. Listening is a loop (``run``) with a ``should_stop``
flag that hands every batch of bodies to ``on_batch``, tells ``on_ready(queue_name,
first)`` after each (re)subscription and ``on_lost()`` when that subscription is gone,
even if consuming had not started (``keepalive`` keeps it while ``on_ready`` runs long).

Bindings are state the consumer keeps: ``bind``/``unbind`` change what it wants and
return at once; the loop applies them, and binds everything wanted again on each
resubscription before ``on_ready`` (so before it reports itself connected).
``wait_bound`` waits until keys are bound (or the subscription is gone, when a
resubscription will bind them before anything is consumed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

#: on_batch(bodies), on_ready(queue_name, first), on_lost()
OnBatch = Callable[[list[bytes]], None]
OnReady = Callable[[str, bool], None]
OnLost = Callable[[], None]


class BusError(Exception):
    """The bus could not take a publish (its broker is away)."""


class Publisher(Protocol):
    def publish(self, body: bytes, route: str = "", confirm: bool = False) -> None: ...

    def heartbeat_tick(self) -> None: ...

    def close(self) -> None: ...


class Consumer(Protocol):
    should_stop: bool
    connected: bool
    queue_name: str | None
    reconnects: int
    #: Wall-clock time of the last frame from the broker: a link that died silently
    #: stopped delivering then, not when the loss was noticed (heartbeats later).
    last_seen: float

    def run(self) -> None: ...

    def bind(self, key: str) -> None: ...

    def unbind(self, key: str) -> None: ...

    def wait_bound(self, keys: list[str], timeout: float) -> bool: ...

    def bound_count(self) -> int: ...

    def stop(self, close: bool = True) -> None: ...

    def keepalive(self) -> None: ...
