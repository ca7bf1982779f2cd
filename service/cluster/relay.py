"""The outbox relay (``manage.py run relay``): moves a backend's committed outbox rows
(``service/store/outbox.py``) into Herald's log and onto the bus, exactly once, in commit
order, surviving its own crash.

One step, inside one transaction on the backend's database: take the relay's advisory lock
(a second relay on the same outbox waits its turn), read the oldest rows, log them in
Herald's database, each under a key naming its outbox row (``message_keys``, the row's
random ``uid``: a row logged before a crash gets its first id back, never a second log
row), send them, delete them,
commit. A crash anywhere rolls the step back and the rows stay: the next step re-logs
nothing and re-sends them under the same ids, which clients drop as duplicates. Reading
whatever is left, oldest first, instead of "after the last id" means a row whose id is
lower but whose commit came later is relayed on the next step, not skipped.
"""

from __future__ import annotations

import logging
import threading
import zlib

import msgspec
from sqlalchemy import Engine, MetaData, Table, Text, cast, delete, func, select

from service.core.envelope import Target
from service.store.messagelog import Entry, append_keyed_many
from service.store.outbox import outbox_table

from .pipeline import LogPublisher

log = logging.getLogger(__name__)

#: Rows moved per step (``HERALD_RELAY_BATCH``): one Herald transaction and one bus
#: message per step.
RELAY_BATCH = 100
#: Seconds an idle relay waits before it looks at the outbox again.
RELAY_IDLE_S = 0.2
#: Seconds a relay waits after a failed step (a database or the broker away).
RELAY_RETRY_S = 2.0


class Relay:
    """Drains one outbox (``source``, the backend's database) into Herald's log and bus."""

    def __init__(self, source: Engine, herald_db: Engine, publisher: LogPublisher, name: str,
                 *, batch: int = RELAY_BATCH, table: Table | None = None) -> None:
        self.source = source
        self.herald_db = herald_db
        self.publisher = publisher
        self.name = name
        self.batch = batch
        self.table = table if table is not None else outbox_table(MetaData())
        # one lock per outbox: its name, hashed to the bigint Postgres' advisory locks take
        self.lock_key = zlib.crc32(f"herald-relay:{self.table.name}".encode())
        self.stopping = threading.Event()

    def run(self) -> None:
        """Relay until ``stop()``; a failed step is logged and tried again."""
        log.info("relay: %s (%s) -> Herald, %d rows a step", self.name, self.table.name,
                 self.batch)
        while not self.stopping.is_set():
            try:
                moved = self.step()
            except Exception:
                log.exception("relay: step failed, retrying in %.1f s", RELAY_RETRY_S)
                self.stopping.wait(RELAY_RETRY_S)
                continue
            if moved == 0:
                self.stopping.wait(RELAY_IDLE_S)

    def stop(self) -> None:
        self.stopping.set()

    @staticmethod
    def key_of(uid: str) -> str:
        """The log's dedupe key of one outbox row (its ``uid``: not its id, which a
        recreated table hands out again)."""
        return f"outbox:{uid}"

    def step(self) -> int:
        """Move up to ``batch`` committed rows; returns how many (0: idle, or another
        relay holds the lock)."""
        t = self.table
        with self.source.begin() as src:
            if not src.execute(select(func.pg_try_advisory_xact_lock(self.lock_key))
                               ).scalar_one():
                return 0
            rows = src.execute(
                select(t.c.id, t.c.uid, t.c.target_kind, t.c.target_key, t.c.event,
                       cast(t.c.data, Text)).order_by(t.c.id).limit(self.batch)).all()
            if not rows:
                return 0
            entries = [Entry(Target.from_log(kind, key), event,
                             msgspec.Raw((data or "null").encode()))
                       for _, _, kind, key, event, data in rows]
            with self.herald_db.begin() as db:
                ids = append_keyed_many(db, self.publisher.origin, entries,
                                        [self.key_of(row[1]) for row in rows])
            # logged: from here a crash loses nothing (the next step re-sends these ids)
            self.publisher.send_logged_many(entries, ids)
            src.execute(delete(t).where(t.c.id.in_([row[0] for row in rows])))
        return len(rows)

