"""What every bus backend offers: publish bytes to every frontend, and listen for them.

A backend knows nothing of envelopes: it carries opaque bodies. Publishing is one call
that raises ``BusError`` (or the transport's own errors, listed in ``BROKER_ERRORS``) when
the broker is away; listening is a loop (``run``) with a ``should_stop`` flag that hands
every batch of bodies to ``on_batch``, tells ``on_ready(queue_name, first)`` after each
(re)subscription and ``on_lost()`` when the subscription is gone.
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
    def publish(self, body: bytes) -> None: ...

    def heartbeat_tick(self) -> None: ...

    def close(self) -> None: ...


class Consumer(Protocol):
    should_stop: bool
    connected: bool
    queue_name: str | None
    reconnects: int

    def run(self) -> None: ...

    def stop(self, close: bool = True) -> None: ...
