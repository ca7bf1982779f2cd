"""Monitors: a snapshot first, then every join and leave in a group, each once.

A monitor's snapshot is read from Postgres while presence envelopes keep arriving, so a
change can land before, inside or after the snapshot. Each monitor keeps the set of
connection ids it has reported as present, with their frontend: a join already known is
dropped (unless the connection resumed on another frontend: that join is news), and so is
a leave of a connection it does not know there. While the snapshot query runs, arriving
changes are buffered and filtered the same way once it is in.
"""

from __future__ import annotations

from typing import Any

import msgspec

Member = dict[str, str]


class PresenceData(msgspec.Struct):
    """The ``data`` of a presence envelope."""

    joins: list[Member] = []
    leaves: list[Member] = []


_decoder = msgspec.json.Decoder(PresenceData)


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
        return [n for n in news if n.joins or n.leaves]

    def filter(self, change: PresenceData) -> PresenceData:
        """Keep only what this monitor has not been told; update what it knows."""
        known = self.known
        joins = [m for m in change.joins if known.get(m["connection_id"]) != m["frontend"]]
        for m in joins:
            known[m["connection_id"]] = m["frontend"]
        leaves = [m for m in change.leaves if known.get(m["connection_id"]) == m["frontend"]]
        for m in leaves:
            del known[m["connection_id"]]
        if len(joins) == len(change.joins) and len(leaves) == len(change.leaves):
            return change
        return PresenceData(joins=joins, leaves=leaves)


def frame(scope: str, group: str, change: PresenceData) -> dict[str, Any]:
    return {"op": "presence", "group": group, "scope": scope, "joins": change.joins,
            "leaves": change.leaves}
