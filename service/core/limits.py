"""Limits: a token bucket for client frames per socket, and per-user quotas."""

from __future__ import annotations

import time

#: Rate-limited frames in a row after which a socket is closed as abusive.
ABUSE_STRIKES = 20


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; one token per frame."""

    __slots__ = ("burst", "rate", "stamp", "strikes", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.strikes = 0

    def level(self, now: float) -> float:
        """The tokens there would be at ``now`` (refilled since the last change, capped)."""
        return min(self.burst, self.tokens + (now - self.stamp) * self.rate)

    def take(self, now: float | None = None) -> bool:
        """Spend one token; False (and a strike) when the bucket is empty."""
        now = time.monotonic() if now is None else now
        self.tokens = self.level(now)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.strikes = 0
            return True
        self.strikes += 1
        return False

    @property
    def abused(self) -> bool:
        return self.strikes >= ABUSE_STRIKES


#: A quota's buckets are pruned (the full ones dropped) once it holds this many users.
QUOTA_PRUNE_AT = 4096
SECONDS_PER_MINUTE = 60.0


class Quota:
    """A per-user quota on this frontend: ``per_min`` units a minute, with a minute's
    worth saved up (a token bucket per user id).

    A bucket that has refilled is the same as a new one, so pruning the full ones loses
    nothing and keeps the map as small as the set of users spending right now."""

    def __init__(self, setting: str, per_min: int) -> None:
        self.setting = setting
        self.per_min = per_min
        self._buckets: dict[str, TokenBucket] = {}
        self._prune_at = QUOTA_PRUNE_AT

    def _bucket(self, user_id: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(user_id)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune(now)
            bucket = self._buckets[user_id] = TokenBucket(self.per_min / SECONDS_PER_MINUTE,
                                                          self.per_min)
            bucket.stamp = now
        return bucket

    def _prune(self, now: float) -> None:
        full = [u for u, b in self._buckets.items() if b.level(now) >= b.burst]
        for user_id in full:
            del self._buckets[user_id]
        self._prune_at = max(QUOTA_PRUNE_AT, 2 * len(self._buckets))

    def take(self, user_id: str, now: float | None = None) -> bool:
        """Spend one unit of this user's quota; False when it is used up."""
        now = time.monotonic() if now is None else now
        return self._bucket(user_id, now).take(now)

    def available(self, user_id: str, now: float | None = None) -> int:
        """Whole units this user may spend right now."""
        now = time.monotonic() if now is None else now
        bucket = self._bucket(user_id, now)
        return int(bucket.level(now))

    def spend(self, user_id: str, n: int, now: float | None = None) -> None:
        """Spend ``n`` units (at most what is there: see ``available``)."""
        now = time.monotonic() if now is None else now
        bucket = self._bucket(user_id, now)
        bucket.tokens = max(0.0, bucket.level(now) - n)
        bucket.stamp = now

    def refusal(self, what: str) -> str:
        """The message of a refusal: which limit, and how to change it."""
        return f"{what} quota used up ({self.setting}={self.per_min} per user per minute)"


class UserQuotas:
    """Every per-user quota of one frontend (``HERALD_USER_*_PER_MIN``)."""

    def __init__(self, *, replay_per_min: int, durable_per_min: int, tasks_per_min: int,
                 queries_per_min: int) -> None:
        self.replay = Quota("HERALD_USER_REPLAY_PER_MIN", replay_per_min)
        self.durable = Quota("HERALD_USER_DURABLE_PER_MIN", durable_per_min)
        self.tasks = Quota("HERALD_USER_TASKS_PER_MIN", tasks_per_min)
        self.queries = Quota("HERALD_USER_QUERIES_PER_MIN", queries_per_min)
