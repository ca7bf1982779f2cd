"""Presence from outside a frontend (the sweeper): leaves for removed memberships."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from service.envelope import encode, presence_envelope
from workers import notify


def publish_leaves(removed: list[dict[str, str]],
                   publish: Callable[[bytes], None] | None = None, origin: str = "") -> int:
    """Publish one presence envelope per group listing the memberships that left."""
    by_group: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for row in removed:
        by_group[(row["scope"], row["group"])].append(
            {"connection_id": row["connection_id"], "user_id": row["user_id"],
             "frontend": row["frontend"]})
    if publish is None:
        pub = notify.publisher()
        publish, origin = pub.bus.publish, pub.origin
    for (scope, group), leaves in by_group.items():
        publish(encode(presence_envelope(origin, scope, group, [], leaves)))
    return len(by_group)
