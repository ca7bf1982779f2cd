"""Presence from outside a frontend (the sweeper): leaves for removed memberships."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from service.envelope import encode, presence_envelope
from workers import notify


def publish_leaves(removed: list[dict[str, Any]]) -> int:
    """Publish one presence envelope per group listing the memberships that left."""
    by_group: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for row in removed:
        by_group[(row["scope"], row["group"])].append(
            {"connection_id": row["connection_id"], "user_id": row["user_id"],
             "frontend": row["frontend"]})
    pub = notify.publisher()
    for (scope, group), leaves in by_group.items():
        pub.bus.publish(encode(presence_envelope(pub.origin, scope, group, [], leaves)))
    return len(by_group)
