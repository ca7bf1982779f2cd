"""Presence from outside a frontend (the sweeper): leaves for removed memberships, through
this process's write-only publisher."""

from __future__ import annotations

from service.cluster.leaves import publish_leaves as _publish_leaves
from workers import notify


def publish_leaves(removed: list[dict[str, str]]) -> int:
    """Publish one presence envelope per group listing the memberships that left."""
    pub = notify.publisher()
    return _publish_leaves(removed, pub.bus.publish, pub.origin)
