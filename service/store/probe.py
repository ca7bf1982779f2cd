"""A Postgres reachability check on a connection of its own, never one of the app's pool.

Readiness must not wait behind the sockets' own work for a pooled connection (a connect
storm can hold every one of them, and the pool waits up to ``POOL_TIMEOUT_S`` for one),
so ``cluster/readiness.py`` asks Postgres through this probe from a background greenlet
and /readyz only reads what it found.
"""

from __future__ import annotations

import contextlib
import math

import gevent
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

#: The statement the probe runs: a round trip, nothing read.
PROBE_SQL = text("SELECT 1")


class ProbeTimeout(Exception):
    """Postgres did not answer the probe within its bound."""


class DedicatedProbe:
    """``check()`` runs ``SELECT 1`` on one connection kept for the probe alone.

    It raises when Postgres cannot answer within ``timeout_s``: the connection is then
    dropped (not returned anywhere: it may be stuck mid-query) and made anew next time.
    The URL is the app's, so a multi-host URL is followed the same way (libpq tries its
    hosts in order; ``target_session_attrs=read-write`` finds the primary).
    """

    def __init__(self, url: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        # libpq counts connect_timeout per host in whole seconds, and refuses under 2
        self._engine = create_engine(
            url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": max(2, math.ceil(timeout_s))})
        self._conn: Connection | None = None

    def check(self) -> None:
        """Raise unless Postgres answers a round trip within ``timeout_s``."""
        try:
            # the bound holds in the gevent worker (psycopg waits cooperatively there); a
            # cut link would otherwise hold the query for the kernel's TCP retry time
            with gevent.Timeout(self.timeout_s, ProbeTimeout(
                    f"no answer within {self.timeout_s:g} s")):
                if self._conn is None:
                    self._conn = self._engine.connect()
                self._conn.execute(PROBE_SQL)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Drop the probe's connection (the next check makes a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()  # no rollback on a connection that may be mid-query
                conn.close()
