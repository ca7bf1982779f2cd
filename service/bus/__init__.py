"""The bus: how envelopes reach every frontend. The URL picks the backend, as in
encode/broadcaster: ``amqp://`` (RabbitMQ, through kombu: ``amqp.py``) or ``memory://NAME``
(one process, for tests: ``memory.py``). ``base.py`` says what a backend offers.

This package carries bytes: of Herald's it imports only ``service.core``'s helpers.
"""

from __future__ import annotations

from typing import Any

from .amqp import BROKER_ERRORS, BROKER_HEARTBEAT_S, BusPublisher, fanout_exchange
from .amqp_consumer import BusConsumer
from .base import BusError, Consumer, Publisher

MEMORY_SCHEME = "memory://"

__all__ = ["BROKER_ERRORS", "BROKER_HEARTBEAT_S", "BusConsumer", "BusError", "BusPublisher",
           "Consumer", "Publisher", "fanout_exchange", "make_consumer", "make_publisher"]


def make_publisher(url: str, exchange: str, **options: Any) -> Publisher:
    """A publisher for the backend ``url`` names (``confirm``, ``lock``, ``sleep``: AMQP)."""
    if url.startswith(MEMORY_SCHEME):
        from .memory import MemoryPublisher  # on gevent, which the installable client lacks

        return MemoryPublisher(url, exchange)
    return BusPublisher(url, exchange, **options)


def make_consumer(url: str, exchange: str, **options: Any) -> Consumer:
    """A consumer loop for the backend ``url`` names (``on_batch``, ``on_ready``,
    ``on_lost``, ``sleep``)."""
    if url.startswith(MEMORY_SCHEME):
        from .memory import MemoryConsumer  # on gevent, which the installable client lacks

        return MemoryConsumer(url, exchange, **options)
    return BusConsumer(url, exchange, **options)
