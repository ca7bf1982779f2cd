"""Routing keys: which frontends a message for a group, a user or a connection must reach.

With targeted routing (``HERALD_ROUTING=targeted``, the default) such a message goes to the routed
exchange (``<exchange>.routed``) with the key of its target, and each frontend binds its queue to
the keys of the recipients it holds: a group with a local member, a user with a local socket, each
local connection. ``all``, presence and control envelopes stay on the fanout, which every frontend's
queue is bound to. ``fanout`` sends everything to the fanout (the first round's design, kept for
comparison and for mixed clusters during an upgrade).

The targeted exchange is a topic exchange, so a frontend set to ``fanout`` binds its queue with
``#`` and still gets what targeted publishers send: any mix of the setting across frontends, workers
and backends delivers everything (only the cost differs).

A key is the target's names as they are when it fits AMQP's 255 bytes and holds no topic wildcard
character (so the broker's bindings can be read in its management UI), else a hash of them; a
frontend filters what it receives by the target itself, so a collision could only cost a dropped
message's CPU.
"""

from __future__ import annotations

import hashlib
import zlib

from service.core.envelope import Target

ROUTINGS = ("targeted", "fanout")
#: The longest routing key AMQP allows, bytes.
KEY_MAX_BYTES = 255
#: Connection keys are hashed into this many shards (see ``connection_key``).
CONNECTION_SHARDS = 256
#: The binding that matches every key (a ``fanout`` frontend's).
EVERYTHING = "#"


def _key(prefix: str, name: str) -> str:
    key = f"{prefix}.{name}"
    if len(key.encode()) <= KEY_MAX_BYTES and "*" not in name and "#" not in name:
        return key
    return f"h{prefix}.{hashlib.blake2b(name.encode(), digest_size=20).hexdigest()}"


def group_key(scope: str, group: str) -> str:
    return _key("g", f"{scope}/{group}")


def user_key(user_id: str) -> str:
    return _key("u", user_id)


def connection_key(connection_id: str) -> str:
    """One of ``CONNECTION_SHARDS`` keys: a frontend binds the shards of the connections
    it holds, so a connect storm binds nothing once its shards are bound (a bind costs
    the broker about 0.3-0.7 ms: ``bench.connect``), at the price of connection messages
    reaching every frontend that holds a connection of the same shard."""
    return f"c.{zlib.crc32(connection_id.encode()) % CONNECTION_SHARDS:02x}"


def route_of(target: Target) -> str:
    """The routing key of a target; "" for ``all`` (the fanout)."""
    if target.kind == "group":
        return group_key(target.scope, target.key)
    if target.kind == "user":
        return user_key(target.key)
    if target.kind == "connection":
        return connection_key(target.key)
    return ""
