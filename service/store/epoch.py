"""The log's epoch: one string that changes whenever the log lost continuity, so a client
can tell "everything after my last_id was replayed" from "these ids mean something else
now" (``welcome.epoch``, ``hello.epoch``).

The epoch is ``<random id>.<sequence oid>.<sequence filenode>``:

* the random id is the one row of ``log_epoch`` (migration 0006 makes it at
  ``manage.py db upgrade``); ``manage.py db new-epoch`` replaces it (after a physical
  restore or a failover that lost commits), and so does a trigger on ``TRUNCATE messages``;
* the id sequence's oid changes when the log is restored from a dump (``pg_restore``
  makes the sequence anew), and its filenode when the sequence is reset
  (``ALTER SEQUENCE … RESTART``, ``TRUNCATE … RESTART IDENTITY``): ids would repeat.

Dropping old partitions (retention) is not a loss of continuity: that is ``gap``.
"""

from __future__ import annotations

import secrets
import threading
import time

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

#: How long a frontend serves the epoch it read before it reads it again: a restore is
#: noticed within this long without a query per hello.
EPOCH_REFRESH_S = 30.0
#: Bytes of randomness in the stored id (hex, twice as many characters).
EPOCH_RANDOM_BYTES = 8

_READ = text(
    "SELECT e.epoch || '.' || c.oid::text || '.' || "
    "pg_relation_filenode(c.oid)::text FROM log_epoch e, pg_class c "
    "WHERE e.id = 1 AND c.oid = CAST('messages_id_seq' AS regclass)")


def new_id() -> str:
    return secrets.token_hex(EPOCH_RANDOM_BYTES)


def read(engine: Engine) -> str:
    """The epoch as stored now ("" when the table has no row yet)."""
    with engine.connect() as db:
        return str(db.execute(_READ).scalar() or "")


def renew(engine: Engine) -> str:
    """Store a new random id (``manage.py db new-epoch``); the new epoch."""
    with engine.begin() as db:
        db.execute(text("INSERT INTO log_epoch (id, epoch) VALUES (1, :e) ON CONFLICT (id) "
                        "DO UPDATE SET epoch = EXCLUDED.epoch, changed_at = now()"),
                   {"e": new_id()})
    return read(engine)


class EpochCache:
    """The epoch a frontend puts in each welcome: read at most every ``refresh_s``; while
    Postgres cannot be read, the last value read ("" before the first)."""

    def __init__(self, refresh_s: float = EPOCH_REFRESH_S) -> None:
        self.refresh_s = refresh_s
        self.value = ""
        self._read_at: float | None = None
        self._reading = threading.Lock()

    def current(self, engine: Engine) -> str:
        now = time.monotonic()
        if self._read_at is None or now - self._read_at >= self.refresh_s:
            with self._reading:
                if self._read_at is None or now - self._read_at >= self.refresh_s:
                    try:
                        self.value = read(engine)
                    except SQLAlchemyError:
                        return self.value
                    self._read_at = now
        return self.value
