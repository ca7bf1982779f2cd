"""Per-socket limits: a token bucket for client frames."""

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

    def take(self, now: float | None = None) -> bool:
        """Spend one token; False (and a strike) when the bucket is empty."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
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
