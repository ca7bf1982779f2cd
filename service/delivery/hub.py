"""The frontend's local sockets: an index by id, user and group, and the fan-out of one
ready frame to every matching socket (each written through its own ``Conn``).

The index also says which routing keys this frontend needs (``core/routes.py``): it calls
``on_route(key, True)`` when the first local recipient of a group, a user or a connection
shard appears and ``on_route(key, False)`` when the last one goes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from service.core.envelope import Target
from service.core.metrics import Meter
from service.core.presence import MonitorState
from service.core.routes import connection_key, group_key, user_key
from service.delivery.conn import Conn, GroupKey

#: One message for the hub: target, its ready frame, a connection id to skip, publish time.
Delivery = tuple[Target, bytes, str | None, float]


class Hub:
    """Index of this frontend's sockets; delivers a ready frame to every matching one."""

    def __init__(self, meter: Meter | None = None,
                 on_route: Callable[[str, bool], None] | None = None) -> None:
        self.meter = meter or Meter()
        self.on_route = on_route
        self.conns: dict[str, Conn] = {}
        self.by_user: dict[str, set[Conn]] = {}
        self.by_group: dict[GroupKey, set[Conn]] = {}
        self.monitors: dict[GroupKey, set[Conn]] = {}
        self.shards: dict[str, int] = {}  # connection key -> local connections in it

    def add(self, conn: Conn) -> None:
        fresh = conn.id not in self.conns
        self.conns[conn.id] = conn
        users = self.by_user.get(conn.user_id)
        if users is None:
            users = self.by_user[conn.user_id] = set()
            self._route(user_key(conn.user_id), True)
        users.add(conn)
        if fresh:
            shard = connection_key(conn.id)
            held = self.shards.get(shard, 0)
            self.shards[shard] = held + 1
            if not held:
                self._route(shard, True)

    def routes_of(self, conn: Conn) -> list[str]:
        """The routing keys a socket's messages come by (its user, itself, its groups)."""
        return [user_key(conn.user_id), connection_key(conn.id),
                *(group_key(*key) for key in conn.groups)]

    def _route(self, key: str, present: bool) -> None:
        if self.on_route is not None:
            self.on_route(key, present)

    def remove(self, conn: Conn) -> list[GroupKey]:
        """Forget a socket; return the groups it was in (for presence leaves).

        Never blocks: stopping the writer is the socket's own greenlet's job."""
        if self.conns.get(conn.id) is conn:  # not a resumed successor with the same id
            del self.conns[conn.id]
            shard = connection_key(conn.id)
            left = self.shards.pop(shard, 1) - 1
            if left:
                self.shards[shard] = left
            else:
                self._route(shard, False)
        if _discard(self.by_user, conn.user_id, conn):
            self._route(user_key(conn.user_id), False)
        groups = list(conn.groups)
        for key in groups:
            if _discard(self.by_group, key, conn):
                self._route(group_key(*key), False)
        for key in conn.monitors:
            _discard(self.monitors, key, conn)
        conn.groups.clear()
        conn.monitors.clear()
        return groups

    def join(self, conn: Conn, key: GroupKey) -> bool:
        """Add a membership; False when it already existed."""
        if key in conn.groups:
            return False
        conn.groups.add(key)
        members = self.by_group.get(key)
        if members is None:
            members = self.by_group[key] = set()
            self._route(group_key(*key), True)
        members.add(conn)
        return True

    def leave(self, conn: Conn, key: GroupKey) -> bool:
        """Drop a membership; False when there was none."""
        if key not in conn.groups:
            return False
        conn.groups.discard(key)
        if _discard(self.by_group, key, conn):
            self._route(group_key(*key), False)
        return True

    def monitor(self, conn: Conn, key: GroupKey, on: bool) -> MonitorState | None:
        """Start (fresh state, buffering until its snapshot) or stop monitoring a group."""
        if on:
            state = conn.monitors[key] = MonitorState()
            self.monitors.setdefault(key, set()).add(conn)
            return state
        conn.monitors.pop(key, None)
        _discard(self.monitors, key, conn)
        return None

    def matching(self, target: Target) -> Iterable[Conn]:
        """The local sockets a target addresses."""
        if target.kind == "all":
            return list(self.conns.values())
        if target.kind == "group":
            return list(self.by_group.get((target.scope, target.key), ()))
        if target.kind == "user":
            return list(self.by_user.get(target.key, ()))
        conn = self.conns.get(target.key)
        return [conn] if conn is not None else []

    def deliver(self, target: Target, frame: bytes, exclude: str | None = None,
                opened_by: float | None = None, ts: float = 0.0) -> int:
        """Queue one shared frame on every matching socket; return how many got it.

        ``opened_by``: only sockets opened by then (a replay must not hand a socket what
        was published before it existed)."""
        stamps = [ts]  # one list for the whole fan-out
        n = written = 0
        for conn in self.matching(target):
            if opened_by is not None and conn.opened_at > opened_by:
                continue
            if conn.id != exclude:
                n += 1
                if conn.deliver_now(frame, stamps):
                    written += 1
        self.meter.count_sent(written, stamps)
        return n

    def deliver_batch(self, items: list[Delivery]) -> int:
        """Deliver several messages with one write per socket: each socket gets the frames
        addressed to it, in order, joined into one chunk. Returns the deliveries made.

        Sockets that get the same messages share one chunk: when every message goes to
        everyone that is a single join for the whole batch."""
        if len(items) == 1:
            target, frame, exclude, ts = items[0]
            return self.deliver(target, frame, exclude, ts=ts)
        if all(t.kind == "all" and ex is None for t, _, ex, _ in items):
            wanted: dict[Conn, tuple[int, ...]] = dict.fromkeys(self.conns.values(),
                                                                 tuple(range(len(items))))
        else:
            lists: dict[Conn, list[int]] = {}
            for i, (target, _, exclude, _) in enumerate(items):
                for conn in self.matching(target):
                    if conn.id != exclude:
                        lists.setdefault(conn, []).append(i)
            wanted = {conn: tuple(idx) for conn, idx in lists.items()}
        # chunk, stamps and immediate writes per distinct set of messages
        chunks: dict[tuple[int, ...], tuple[bytes, list[float]]] = {}
        written: dict[tuple[int, ...], int] = {}
        n = 0
        for conn, key in wanted.items():
            chunk_stamps = chunks.get(key)
            if chunk_stamps is None:
                chunk_stamps = chunks[key] = (b"".join([items[i][1] for i in key]),
                                              [items[i][3] for i in key])
                written[key] = 0
            if conn.deliver_now(*chunk_stamps):
                written[key] += 1
            n += len(key)
        for key, count in written.items():
            self.meter.count_sent(count, chunks[key][1])
        return n

    def local_members(self, key: GroupKey) -> list[Conn]:
        return list(self.by_group.get(key, ()))


def _discard(index: dict[Any, set[Conn]], key: Any, conn: Conn) -> bool:
    """Take ``conn`` out of ``index[key]``; True when that emptied (and deleted) the set."""
    members = index.get(key)
    if members is not None:
        members.discard(conn)
        if not members:
            del index[key]
            return True
    return False
