"""Herald's store on a Postgres primary with a synchronous standby of the test's own
(tests/topology/pg.py): the multi-host URL, what each write waits for, a promotion
followed by the same engine."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from collections.abc import Iterator

import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from service.core.envelope import Target
from service.store import messagelog, registry
from service.store.db import drop_database, ensure_database, get_engine
from service.store.messagelog import Entry
from service.store.registry import RegistryWriter
from tests.support import PYTHON, ROOT, WAIT_S, wait_until
from tests.topology.pg import PgPair

#: How long a commit that must wait for the (absent) standby is watched not returning.
BLOCKED_S = 1.5


def migrate(url: str) -> None:
    """``manage.py db upgrade`` against ``url``, as a deployment runs it."""
    subprocess.run([PYTHON, str(ROOT / "manage.py"), "db", "upgrade"], cwd=ROOT, check=True,
                   env={**os.environ, "HERALD_DATABASE_URL": url}, capture_output=True,
                   timeout=120)


@pytest.fixture(scope="module")
def pair() -> Iterator[PgPair]:
    with PgPair.running(tag="store") as pg:
        yield pg


@pytest.fixture(scope="module")
def url(pair: PgPair) -> str:
    url = pair.url(f"herald_sb_{uuid.uuid4().hex[:8]}")
    migrate(url)
    return url


def test_the_multi_host_url_reaches_the_primary_whichever_host_comes_first(
        pair: PgPair, url: str) -> None:
    reversed_url = url.replace(f"host={pair.host}:{pair.primary.port}&host={pair.host}:"
                               f"{pair.standby.port}", f"host={pair.host}:{pair.standby.port}"
                               f"&host={pair.host}:{pair.primary.port}")
    assert reversed_url != url
    for u in (url, reversed_url):
        with get_engine(u).connect() as db:
            assert db.execute(text("SELECT pg_is_in_recovery(), inet_server_port()")).one() == (
                False, pair.primary.port)
    # the maintenance paths rename the database: they must keep both hosts too
    other = url.replace("/herald_sb_", "/herald_sb2_")
    assert ensure_database(other) is True
    name = other.split("/")[3].split("?")[0]
    wait_until(lambda: pair.query(pair.standby, "SELECT 1 FROM pg_database WHERE datname = %s",
                                  name))
    drop_database(other)
    assert pair.query(pair.primary, "SELECT 1 FROM pg_database WHERE datname = %s", name) == []


def test_the_log_waits_for_the_standby_and_the_registry_does_not(pair: PgPair,
                                                                 url: str) -> None:
    engine = get_engine(url)
    fid = f"fe-{uuid.uuid4().hex[:8]}"
    registry.register_frontend(engine, fid, "h", None)
    writer = RegistryWriter(engine)
    writer.start()
    ids: list[object] = []
    raw = msgspec.Raw(b'{"n": 1}')
    appends = [
        lambda: ids.append(messagelog.append(engine, "t", Target.all(), "one", raw)),
        lambda: ids.extend(messagelog.append_many(engine, "t", [Entry(Target.all(), "b", raw)])),
    ]
    threads = [threading.Thread(target=a, daemon=True) for a in appends]
    # the servers' default is synchronous_commit=local: only the log's SET LOCAL makes
    # it wait; a standby name nobody has is a standby that went away
    pair.set_synchronous_standbys("herald_absent")
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(BLOCKED_S / len(threads))
        assert all(th.is_alive() for th in threads), "a log commit did not wait for the standby"
        assert ids == []
        # meanwhile sockets still connect and join
        conn = f"c-{uuid.uuid4().hex[:8]}"
        assert writer.write("connect", WAIT_S, id=conn, frontend_id=fid, user_id="u")
        assert writer.write("join", WAIT_S, connection_id=conn, scope="s", group="g")
    finally:
        pair.set_synchronous_standbys("herald_standby")
    for th in threads:
        th.join(WAIT_S)
    assert not any(th.is_alive() for th in threads) and len(ids) == 2
    assert all(isinstance(i, int) for i in ids)
    # acknowledged, so flushed on the standby (visible there once applied)
    db = url.split("/")[3].split("?")[0]
    wait_until(lambda: len(pair.query(pair.standby, "SELECT id FROM messages WHERE id = ANY(%s)",
                                      ids, database=db)) == 2)
    writer.stop(timeout_s=WAIT_S)


def test_a_read_only_session_is_an_outage_and_is_dropped(pair: PgPair, url: str) -> None:
    db = url.split("/")[3].split("?")[0]
    # a session that did land on the standby (the URL allows it): writes are refused
    engine = get_engine(pair.node_url(pair.standby, db) + "?target_session_attrs=any")
    backend = "SELECT pg_backend_pid()"
    with engine.connect() as conn:
        first = conn.execute(text(backend)).scalar()
    # OperationalError, not InternalError: the API answers 503
    with pytest.raises(OperationalError), engine.begin() as conn:
        assert conn.execute(text(backend)).scalar() == first  # the pool's one connection
        conn.execute(text("INSERT INTO frontends (id, host) VALUES ('x', 'h')"))
    with engine.connect() as conn:  # dropped, not handed to the next caller
        assert conn.execute(text(backend)).scalar() != first


def test_a_promotion_is_followed_by_the_same_engine() -> None:
    with PgPair.running(tag="promote") as pg:
        url = pg.url(f"herald_pr_{uuid.uuid4().hex[:8]}")
        migrate(url)
        engine = get_engine(url)
        before = messagelog.append(engine, "t", Target.all(), "before", msgspec.Raw(b"1"))
        pg.kill_primary()
        # the standby refuses writes until promoted: an error, not a hang, not its session
        with pytest.raises(OperationalError):
            messagelog.append(engine, "t", Target.all(), "between", msgspec.Raw(b"2"))
        pg.promote()
        after = messagelog.append(engine, "t", Target.all(), "after", msgspec.Raw(b"3"))
        with engine.connect() as db:
            assert db.execute(text("SELECT inet_server_port()")).scalar() == pg.standby.port
            got = db.execute(text("SELECT id FROM messages ORDER BY id")).scalars().all()
        assert before in got and after in got and after > before
