"""Monitors: a snapshot first, then every join, leave and meta update in a group, each once.

A monitor's snapshot is read from Postgres while presence envelopes keep arriving, so a
change can land before, inside or after the snapshot. Each monitor keeps the set of
connection ids it has reported as present, with their frontend: a join already known is
dropped (unless the connection resumed on another frontend: that join is news), and so is
a leave of a connection it does not know there. While the snapshot query runs, arriving
changes are buffered and filtered the same way once it is in. An update is passed on only
for a connection the monitor knows there.

``coalesce`` folds the changes of one batching interval into one per group, with each
connection in at most one of joins, leaves and updates, so their order within a frame does
not matter.
"""

from __future__ import annotations

from typing import Any

import msgspec

from service.core.errors import BadRequest

Member = dict[str, Any]


class PresenceData(msgspec.Struct):
    """The ``data`` of a presence envelope."""

    joins: list[Member] = []
    leaves: list[Member] = []
    updates: list[Member] = []


_decoder = msgspec.json.Decoder(PresenceData)


def check_meta(meta: Any, limit: int) -> dict[str, Any]:
    """A presence meta as given (a JSON object of at most ``limit`` bytes), else BadRequest
    naming the limit."""
    if not isinstance(meta, dict):
        raise BadRequest("meta must be a JSON object")
    size = len(msgspec.json.encode(meta))
    if size > limit:
        raise BadRequest(f"meta is {size} bytes, more than HERALD_MAX_META={limit} allows "
                         "(raise HERALD_MAX_META or send less)")
    return meta


def decode(raw: msgspec.Raw | bytes) -> PresenceData:
    return _decoder.decode(raw)


class MonitorState:
    """What one monitoring socket has been told about one group."""

    __slots__ = ("known", "pending")

    def __init__(self) -> None:
        self.known: dict[str, str] = {}  # connection id -> frontend
        # changes that arrive while the snapshot is being read; None once it is sent
        self.pending: list[PresenceData] | None = []

    def snapshot(self, members: list[Member]) -> list[PresenceData]:
        """Record the snapshot; return the buffered changes that are news after it."""
        self.known = {m["connection_id"]: m["frontend"] for m in members}
        buffered, self.pending = self.pending or [], None
        news = [self.filter(change) for change in buffered]
        return [n for n in news if n.joins or n.leaves or n.updates]

    def filter(self, change: PresenceData) -> PresenceData:
        """Keep only what this monitor has not been told; update what it knows."""
        known = self.known
        joins = [m for m in change.joins if known.get(m["connection_id"]) != m["frontend"]]
        for m in joins:
            known[m["connection_id"]] = m["frontend"]
        leaves = [m for m in change.leaves if known.get(m["connection_id"]) == m["frontend"]]
        for m in leaves:
            del known[m["connection_id"]]
        updates = [m for m in change.updates if known.get(m["connection_id"]) == m["frontend"]]
        if (len(joins) == len(change.joins) and len(leaves) == len(change.leaves)
                and len(updates) == len(change.updates)):
            return change
        return PresenceData(joins=joins, leaves=leaves, updates=updates)


def coalesce(changes: list[PresenceData]) -> PresenceData:
    """One change with the net effect of ``changes`` (in order) per connection.

    Present before (its first change is not a join) and after (its last is not a leave):
    an update with the latest entry; absent before, present after: a join; present
    before, absent after: a leave. A join then a leave still sends the leave: a monitor
    whose snapshot saw the join in between needs it (the others drop it)."""
    first: dict[str, str] = {}
    last: dict[str, tuple[str, Member]] = {}
    for change in changes:
        for kind, members in (("join", change.joins), ("leave", change.leaves),
                              ("update", change.updates)):
            for m in members:
                cid = m["connection_id"]
                first.setdefault(cid, kind)
                last.pop(cid, None)  # re-insert: the dict keeps the order of last changes
                last[cid] = (kind, m)
    out = PresenceData(joins=[], leaves=[], updates=[])
    for cid, (kind, m) in last.items():
        before, after = first[cid] != "join", kind != "leave"
        if not after:
            out.leaves.append(m)
        elif before:
            out.updates.append(m)
        else:
            out.joins.append(m)
    return out


def frame(scope: str, group: str, change: PresenceData) -> dict[str, Any]:
    return {"op": "presence", "group": group, "scope": scope, "joins": change.joins,
            "leaves": change.leaves, "updates": change.updates}
