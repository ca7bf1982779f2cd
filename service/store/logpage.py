"""The newest durable messages of the whole log, a page at a time, for operators
(``GET /api/messages``, the admin console's log).

Newest first, paged by id: ``before`` is the previous page's ``next``, so a page never
skips or repeats a message however many are published meanwhile. Only rows within the
retention (``HERALD_HISTORY_TTL``) are read: a row its day partition still keeps past
that (up to a day, ``store/partitions.py``) is not shown, and the partitions wholly older
are pruned from the query by their bounds. Each day partition's primary key index
(id, created_at) is walked backwards from the cursor and merged (Merge Append), so a page
reads at most ``limit + 1`` rows per partition, however long the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from service.core.envelope import Envelope
from service.store.models import Message
from service.store.replay import _COLUMNS, _envelopes

#: Most messages one page holds, and how many when the caller does not say.
LOG_PAGE_MAX = 100
LOG_PAGE_DEFAULT = 20


@dataclass(frozen=True)
class LogPage:
    messages: list[Envelope]  # newest first
    next: int | None  # ``before`` for the next, older page; None: this is the oldest


def newest(engine: Engine, *, ttl_s: int, limit: int = LOG_PAGE_DEFAULT,
           before: int | None = None) -> LogPage:
    """At most ``limit`` durable messages logged within the last ``ttl_s`` seconds, newest
    first: the newest ones, or the newest below the log id ``before``."""
    limit = max(1, min(limit, LOG_PAGE_MAX))
    where = [Message.created_at >= datetime.now(UTC) - timedelta(seconds=ttl_s)]
    if before is not None:
        where.append(Message.id < before)
    with engine.connect() as db:
        # one more than the page: whether an older page exists, without another query
        rows = list(db.execute(select(*_COLUMNS).where(*where).order_by(Message.id.desc())
                               .limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return LogPage(_envelopes(rows), rows[-1][0] if more else None)
