"""A session that stalls inside a transaction is ended by Postgres after
``HERALD_DB_TX_IDLE_TIMEOUT`` (``store/db.py``), so its locks go with it.

The case it is for: a frontend cut off from the network between a write and its COMMIT (its
heartbeat UPDATE, say). Its row stays locked for as long as the server keeps the session,
which without a timeout is until TCP gives up, and the sweep (``FOR UPDATE SKIP LOCKED``)
passes over a locked row: the frontend is never swept while cut off, and its clients'
rows, which a resume elsewhere takes, stay its own.
"""

from __future__ import annotations

import contextlib
import time
import uuid

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from service.store import registry
from service.store.db import get_engine, session_options
from tests.support import WAIT_S, wait_until
from workers.maintenance import sweep_dead_frontends

HEARTBEAT_S = 1.0


def _exists(engine: Engine, fid: str) -> bool:
    with engine.connect() as db:
        return db.execute(text("SELECT 1 FROM frontends WHERE id = :f"), {"f": fid}).first() \
            is not None


@pytest.mark.parametrize("timeout_s", [0.0, 1.0])
def test_a_frontend_stalled_mid_transaction_is_still_swept(engine: Engine, database: str,
                                                           timeout_s: float) -> None:
    """Without the timeout the sweep skips the stalled frontend's row (so the case is real);
    with it, Postgres ends the session and the next sweep removes the frontend."""
    fid = f"fe-{uuid.uuid4().hex[:12]}"
    registry.register_frontend(engine, fid, "h", None)
    with engine.begin() as db:  # silent for an hour, as far as anyone can see
        db.execute(text("UPDATE frontends SET heartbeat_at = now() - interval '1 hour' "
                        "WHERE id = :f"), {"f": fid})
    stalled = get_engine(database, 1, timeout_s).connect()
    stalled.begin()
    # its next heartbeat, whose COMMIT never arrives: the row is locked meanwhile
    stalled.execute(text("UPDATE frontends SET heartbeat_at = now() WHERE id = :f"),
                    {"f": fid})
    try:
        if timeout_s:
            wait_until(lambda: (sweep_dead_frontends(engine, HEARTBEAT_S), _exists(engine, fid))
                       [1] is False, timeout=WAIT_S, interval=0.5)
        else:
            time.sleep(2 * HEARTBEAT_S)
            sweep_dead_frontends(engine, HEARTBEAT_S)
            assert _exists(engine, fid)  # skipped, locked by a session nobody will finish
    finally:
        with contextlib.suppress(DBAPIError):  # the server may have ended it already
            stalled.rollback()
        stalled.invalidate()
        registry.deregister_frontend(engine, fid)


def test_the_options_name_the_timeout_in_milliseconds() -> None:
    assert session_options(0) == ""
    assert session_options(2.5) == ("-c idle_in_transaction_session_timeout=2500 "
                                    "-c tcp_user_timeout=2500")


def test_every_herald_session_has_the_default_timeouts(engine: Engine) -> None:
    """``get_engine`` without the argument (HERALD_DB_TX_IDLE_TIMEOUT's default, 10 s)."""
    with engine.connect() as db:
        assert db.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == "10s"
        assert db.execute(text("SHOW tcp_user_timeout")).scalar() == "10000"  # ms
