"""A group's durable history, read from the log a page at a time (the `history` op, its
HTTP twin, and `join`'s `rewind`).

Each page is one query on ``ix_messages_target`` (target_kind, target_key, id), which
every day partition has: Postgres walks each partition's index from the cursor and merges
them (Merge Append), reading at most ``limit`` rows per partition, however long the
group's history or the log. Pages are by log id, so a page never skips or repeats a
message however many are published meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, func, select

from service.core.envelope import Envelope
from service.store.models import Message
from service.store.replay import _COLUMNS, _envelopes

#: Most events one history page or one rewind holds.
HISTORY_MAX = 100
#: Largest log id a cursor may name (a Postgres bigint).
MAX_LOG_ID = 2**63 - 1


@dataclass(frozen=True)
class Page:
    events: list[Envelope]  # oldest first
    gap: bool  # True: retention cut the range asked for (older events are gone)


def page(engine: Engine, scope: str, group: str, *, limit: int = HISTORY_MAX,
         before: int | None = None, after: int | None = None) -> Page:
    """At most ``limit`` of the group's durable events, oldest first: the first ones after
    ``after`` when it is given, else the newest ones before ``before`` (or the newest).

    ``gap``: the range reaches below the log's oldest retained id, and ids before that one
    are gone (retention dropped them), so some of the group's events may be missing: an
    ``after`` older than the log, or a backward page that ran out of events."""
    limit = max(1, min(limit, HISTORY_MAX))
    where = [Message.target_kind == "group", Message.target_key == f"{scope}/{group}"]
    if before is not None:
        where.append(Message.id < before)
    if after is not None:
        where.append(Message.id > after)
    order = Message.id.asc() if after is not None else Message.id.desc()
    with engine.connect() as db:
        rows = list(db.execute(select(*_COLUMNS).where(*where).order_by(order)
                               .limit(limit)).all())
        oldest = db.execute(select(func.min(Message.id))).scalar()
    if after is None:
        rows.reverse()
    # the lowest id this page vouches for: a full backward page starts at its first row
    if after is not None:
        lower = after
    elif len(rows) == limit:
        lower = rows[0][0]
    else:
        lower = 0
    gap = oldest is not None and lower + 1 < oldest
    return Page(_envelopes(rows), gap)


def rewind(engine: Engine, scope: str, group: str, n: int,
           since: int | None = None) -> list[Envelope]:
    """The group's last ``n`` durable events, oldest first (``join``'s ``rewind``), and
    with ``since`` also every later event after that id (up to ``HISTORY_MAX``): those
    logged while the join was being made, which the socket also holds live. Sent before
    what it holds, they keep the order (the held copies are repeats, dropped by id);
    without them the held ones older than the last ``n`` would follow the newer."""
    if n <= 0:
        return []
    last = page(engine, scope, group, limit=n).events
    if since is None or (last and last[0].id is not None and last[0].id <= since + 1):
        return last
    during = page(engine, scope, group, after=since).events
    merged = {e.id: e for e in (*during, *last)}
    return [merged[i] for i in sorted(i for i in merged if i is not None)]
