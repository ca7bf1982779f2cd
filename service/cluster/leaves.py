"""Presence leaves for memberships removed without their socket (a sweep, a restart)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from service.core.envelope import encode, presence_envelope


def publish_leaves(removed: list[dict[str, Any]], publish: Callable[[bytes], None],
                   origin: str) -> int:
    """Publish one presence envelope per group listing the memberships that left."""
    by_group: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in removed:
        by_group[(row["scope"], row["group"])].append(
            {"connection_id": row["connection_id"], "user_id": row["user_id"],
             "frontend": row["frontend"], "meta": row.get("meta") or {}})
    for (scope, group), leaves in by_group.items():
        publish(encode(presence_envelope(origin, scope, group, [], leaves)))
    return len(by_group)
