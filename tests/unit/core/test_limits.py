"""service.core.limits: the per-user quotas (token buckets with a minute's worth saved up)."""

from __future__ import annotations

from service.core import limits
from service.core.limits import Quota


def test_a_quota_allows_a_minutes_worth_then_refills() -> None:
    q = Quota("HERALD_USER_TASKS_PER_MIN", 60)
    assert all(q.take("u", now=100.0) for _ in range(60))
    assert not q.take("u", now=100.0)
    assert q.take("other", now=100.0)  # per user
    assert q.take("u", now=101.0)  # one a second comes back
    assert not q.take("u", now=101.0)
    assert "HERALD_USER_TASKS_PER_MIN=60" in q.refusal("task start")


def test_available_and_spend() -> None:
    q = Quota("HERALD_USER_REPLAY_PER_MIN", 1000)
    assert q.available("u", now=0.0) == 1000
    q.spend("u", 900, now=0.0)
    assert q.available("u", now=0.0) == 100
    q.spend("u", 500, now=0.0)  # never below zero
    assert q.available("u", now=0.0) == 0
    assert q.available("u", now=6.0) == 100  # 1000 a minute: 100 in 6 s


def test_full_buckets_are_pruned() -> None:
    q = Quota("X", 60)
    for i in range(limits.QUOTA_PRUNE_AT):
        q.take(f"u{i}", now=0.0)
    q.take("busy", now=59.0)
    q.take("busy", now=59.0)
    # a minute later every bucket but the busy one is full again: the next new user prunes
    q.take("new", now=60.0)
    assert set(q._buckets) == {"busy", "new"}
