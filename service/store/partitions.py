"""The durable log's partitions: one per UTC day, made ahead of time, dropped whole.

``messages`` is partitioned by ``created_at`` (migration 0004). Beat runs ``maintain``
every few minutes (``workers/maintenance.py``); it is idempotent and safe to run from
several places at once (each statement takes the locks it needs, ``IF [NOT] EXISTS``):

* the partitions of today and the next ``AHEAD_DAYS`` days exist, so inserts never wait
  for maintenance; a row that finds no day partition (beat stopped for days) lands in
  ``messages_default``, and is moved into its day's partition when that one is made;
* a day partition whose last row is older than the retention (``HERALD_HISTORY_TTL``) is
  dropped: pruning a day of messages is one ``DROP TABLE``, not a ``DELETE`` of each row
  and the vacuum after it. So the log keeps between TTL and TTL + 1 day.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Connection, Engine, text

#: Days of partitions made ahead of today.
AHEAD_DAYS = 3
PARENT = "messages"
DEFAULT = "messages_default"
#: The idempotency keys in ``message_keys`` (``store/idempotency.py``'s prefix).
IDEM_LIKE = "idem:%"
_NAME = re.compile(r"^messages_p(\d{8})$")


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's ``include_name``: the partitions are made and dropped at run time, not
    by migrations, so autogenerate must not see them."""
    return not (type_ == "table" and name is not None
                and (name == DEFAULT or _NAME.match(name) is not None))


def partition_name(day: date) -> str:
    return f"messages_p{day:%Y%m%d}"


def day_partitions(db: Connection) -> dict[date, str]:
    """The day partitions that exist, by day."""
    rows = db.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = CAST(:parent AS regclass)"), {"parent": PARENT}).scalars()
    out = {}
    for name in rows:
        m = _NAME.match(name)
        if m:
            out[datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=UTC).date()] = name
    return out


def create_day(db: Connection, day: date) -> bool:
    """Make the partition of ``day`` (moving its rows out of the default partition
    first, as Postgres requires); False when it existed."""
    if day in day_partitions(db):
        return False
    lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
    bounds = {"lo": lo, "hi": lo + timedelta(days=1)}
    name = partition_name(day)
    # one transaction: no insert sees the day without a home
    db.execute(text(f"LOCK TABLE {PARENT} IN SHARE ROW EXCLUSIVE MODE"))
    if day in day_partitions(db):  # made meanwhile by another maintainer
        return False
    # (DDL takes no parameters: the temporary table is made empty, then filled)
    db.execute(text(f"CREATE TEMP TABLE moving (LIKE {DEFAULT}) ON COMMIT DROP"))
    db.execute(text(f"WITH moved AS (DELETE FROM {DEFAULT} WHERE created_at >= :lo AND "
                    "created_at < :hi RETURNING *) INSERT INTO moving SELECT * FROM moved"),
               bounds)
    db.execute(text(f"CREATE TABLE {name} PARTITION OF {PARENT} "
                    f"FOR VALUES FROM ('{lo.isoformat()}') TO "
                    f"('{(lo + timedelta(days=1)).isoformat()}')"))
    db.execute(text(f"INSERT INTO {PARENT} SELECT * FROM moving"))
    db.execute(text("DROP TABLE moving"))
    return True


def drop_day(engine: Engine, day: date) -> bool:
    """Drop the partition of ``day``; False when it is gone already. Under the same lock
    as ``create_day``: two maintainers dropping one partition at once make Postgres fail
    ("could not find tuple for parent"), so the second waits and finds it gone."""
    with engine.begin() as db:
        db.execute(text(f"LOCK TABLE {PARENT} IN SHARE ROW EXCLUSIVE MODE"))
        if day not in day_partitions(db):
            return False
        db.execute(text(f"DROP TABLE {partition_name(day)}"))
    return True


def maintain(engine: Engine, ttl_s: float, now: datetime | None = None,
             idempotency_ttl_s: float | None = None) -> tuple[list[str], list[str]]:
    """Make the coming days' partitions and drop the expired ones; (made, dropped).
    Task outcomes' dedupe keys go with the log, idempotency keys after their own TTL
    (default: the log's)."""
    now = now or datetime.now(UTC)
    today = now.astimezone(UTC).date()
    made: list[str] = []
    for offset in range(AHEAD_DAYS + 1):
        day = today + timedelta(days=offset)
        with engine.begin() as db:
            if create_day(db, day):
                made.append(partition_name(day))
    cutoff = now - timedelta(seconds=ttl_s)
    dropped: list[str] = []
    with engine.begin() as db:
        existing = day_partitions(db)
    for day, name in sorted(existing.items()):
        end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        if end <= cutoff and drop_day(engine, day):  # every row is past the retention
            dropped.append(name)
    with engine.begin() as db:  # what the default partition and the key table hold
        db.execute(text(f"DELETE FROM {DEFAULT} WHERE created_at < :cutoff"),
                   {"cutoff": cutoff})
        # both by the created_at index: each scans only rows past its cutoff
        db.execute(text("DELETE FROM message_keys WHERE created_at < :cutoff "
                        "AND key NOT LIKE :idem"), {"cutoff": cutoff, "idem": IDEM_LIKE})
        idem_cutoff = now - timedelta(seconds=idempotency_ttl_s or ttl_s)
        db.execute(text("DELETE FROM message_keys WHERE created_at < :cutoff "
                        "AND key LIKE :idem"), {"cutoff": idem_cutoff, "idem": IDEM_LIKE})
    return made, dropped
