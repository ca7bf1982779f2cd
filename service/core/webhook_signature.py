"""Signing and verifying webhooks: ``Herald-Signature: t=<unix seconds>,v1=<hex>``.

``v1`` is the hex HMAC-SHA256 of ``"<t>.<body>"`` keyed with ``HERALD_WEBHOOK_SECRET``.
A receiver checks it with ``verify`` (or the same three lines in its own language) and
refuses a ``t`` older than a few minutes, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time

#: The request header that carries the signature.
HEADER = "Herald-Signature"
#: How old a signature ``verify`` accepts by default (also how far in the future).
TOLERANCE_S = 300


def signature(secret: str, body: bytes, t: int) -> str:
    """The hex HMAC-SHA256 of ``"<t>.<body>"``."""
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, now: float | None = None) -> str:
    """The ``Herald-Signature`` header value for ``body``, signed now."""
    t = int(time.time() if now is None else now)
    return f"t={t},v1={signature(secret, body, t)}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: float = TOLERANCE_S,
           now: float | None = None) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its ``t`` is recent."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, body, t), parts.get("v1", ""))
