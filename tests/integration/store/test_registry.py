"""service.store.registry against this run's real Postgres database."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from service.store import registry
from service.store.registry import RegistryWriter

WAIT_S = 30.0


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def rows(engine: Engine, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as db:
        return [tuple(r) for r in db.execute(text(sql), params)]


def memberships(engine: Engine, conn_id: str) -> list[tuple[str, str]]:
    return rows(engine, "SELECT scope, group_name FROM memberships WHERE connection_id = :c "
                "ORDER BY scope, group_name", c=conn_id)


@pytest.fixture
def frontend(engine: Engine) -> Iterator[str]:
    fid = uid("fe")
    registry.register_frontend(engine, fid, "host-1", "amq.gen-q1")
    yield fid
    registry.deregister_frontend(engine, fid)


@pytest.fixture
def writer(engine: Engine) -> Iterator[RegistryWriter]:
    w = RegistryWriter(engine)
    yield w
    if w._greenlet is not None and not w._greenlet.dead:
        w.stop(timeout_s=WAIT_S)


def attachment(engine: Engine, conn_id: str) -> list[tuple[Any, ...]]:
    """(frontend_id, detached) of a connection row; [] when the row is gone."""
    return rows(engine, "SELECT frontend_id, detached_at IS NOT NULL FROM connections "
                "WHERE id = :c", c=conn_id)


def test_register_heartbeat_deregister_detaches(engine: Engine, writer: RegistryWriter) -> None:
    fid = uid("fe")
    assert registry.register_frontend(engine, fid, "h", None) == []
    assert rows(engine, "SELECT host, queue, draining FROM frontends WHERE id = :f", f=fid) == [
        ("h", None, False)]
    assert registry.heartbeat(engine, fid, "amq.gen-x", True) is True
    assert rows(engine, "SELECT queue, draining FROM frontends WHERE id = :f", f=fid) == [
        ("amq.gen-x", True)]
    # the stats a heartbeat carries are kept until the next one that carries any
    assert registry.heartbeat(engine, fid, "amq.gen-x", True, {"published": 3}) is True
    assert registry.heartbeat(engine, fid, "amq.gen-x", True) is True
    assert rows(engine, "SELECT stats FROM frontends WHERE id = :f", f=fid) == [
        ({"published": 3},)]

    writer.start()
    c1, c2 = uid("c"), uid("c")
    g = uid("g")
    for c in (c1, c2):
        assert writer.write("connect", WAIT_S, id=c, frontend_id=fid, user_id="u") is True
        assert writer.write("join", WAIT_S, connection_id=c, scope="s", group=g) is True
    assert attachment(engine, c1) == [(fid, False)]
    assert len(registry.get_members(engine, "s", g)) == 2

    registry.deregister_frontend(engine, fid)
    assert rows(engine, "SELECT count(*) FROM frontends WHERE id = :f", f=fid) == [(0,)]
    # the connections stay, detached, with their groups, for a resume elsewhere
    assert attachment(engine, c1) == attachment(engine, c2) == [(None, True)]
    assert memberships(engine, c1) == memberships(engine, c2) == [("s", g)]
    # but a detached connection is nobody's member any more
    assert registry.get_members(engine, "s", g) == []
    assert g not in {w["group"] for w in registry.which_groups(engine, "s")}
    assert registry.heartbeat(engine, fid, None, False) is False  # swept: row is gone


def test_reregister_detaches_rows_of_an_earlier_run(engine: Engine, frontend: str,
                                                    writer: RegistryWriter) -> None:
    writer.start()
    c, idle = uid("c"), uid("c")
    writer.write("connect", WAIT_S, id=c, frontend_id=frontend, user_id="u")
    writer.write("connect", WAIT_S, id=idle, frontend_id=frontend, user_id="u2")
    writer.write("join", WAIT_S, connection_id=c, scope="s", group="g")
    stale = registry.register_frontend(engine, frontend, "host-2", None)
    assert stale == [{"scope": "s", "group": "g", "connection_id": c, "user_id": "u",
                      "frontend": frontend, "meta": {}}]
    assert registry.register_frontend(engine, frontend, "host-2", None) == []
    assert rows(engine, "SELECT host, queue FROM frontends WHERE id = :f", f=frontend) == [
        ("host-2", None)]
    assert attachment(engine, c) == attachment(engine, idle) == [(None, True)]
    assert memberships(engine, c) == [("s", "g")]


def test_detach_and_reattach(engine: Engine, frontend: str, writer: RegistryWriter) -> None:
    writer.start()
    c = uid("c")
    writer.write("connect", WAIT_S, id=c, frontend_id=frontend, user_id="u")
    writer.write("join", WAIT_S, connection_id=c, scope="s", group="g1")
    writer.write("join", WAIT_S, connection_id=c, scope="t", group="g2")
    # detach and disconnect are guarded by frontend: another frontend's op is a no-op
    assert writer.write("detach", WAIT_S, id=c, frontend_id=uid("fe"))
    assert writer.write("disconnect", WAIT_S, id=c, frontend_id=uid("fe"))
    assert attachment(engine, c) == [(frontend, False)]
    assert writer.write("detach", WAIT_S, id=c, frontend_id=frontend)
    assert attachment(engine, c) == [(None, True)]
    assert memberships(engine, c) == [("s", "g1"), ("t", "g2")]

    assert registry.reattach(engine, c, "someone-else", frontend, 0) is None
    assert registry.reattach(engine, uid("c"), "u", frontend, 0) is None
    assert registry.reattach(engine, c, "u", frontend, 1) is None  # not its generation
    groups, connected_at, gen = registry.reattach(engine, c, "u", frontend, 0) or ([], None, 0)
    assert groups == [("s", "g1", {}), ("t", "g2", {})] and connected_at is not None and gen == 1
    assert attachment(engine, c) == [(frontend, False)]
    # a resume token works once: generation 0 is spent, 1 is the current one
    assert registry.reattach(engine, c, "u", frontend, 0) is None
    assert registry.reattach(engine, c, "u", frontend, 1) is not None


def test_writer_connect_join_leave_disconnect(engine: Engine, frontend: str,
                                              writer: RegistryWriter) -> None:
    writer.start()
    c = uid("c")
    assert writer.write("connect", WAIT_S, id=c, frontend_id=frontend, user_id="user-1")
    assert rows(engine, "SELECT frontend_id, user_id FROM connections WHERE id = :c", c=c) == [
        (frontend, "user-1")]
    # a second connect with the same id is ignored (on conflict do nothing)
    assert writer.write("connect", WAIT_S, id=c, frontend_id=frontend, user_id="other")
    assert rows(engine, "SELECT user_id FROM connections WHERE id = :c", c=c) == [("user-1",)]

    for scope, group in (("s", "g1"), ("s", "g2"), ("t", "g1"), ("s", "g1")):
        assert writer.write("join", WAIT_S, connection_id=c, scope=scope, group=group)
    assert memberships(engine, c) == [("s", "g1"), ("s", "g2"), ("t", "g1")]

    assert writer.write("leave", WAIT_S, connection_id=c, scope="s", group="g1")
    assert writer.write("leave", WAIT_S, connection_id=c, scope="s", group="nope")
    assert memberships(engine, c) == [("s", "g2"), ("t", "g1")]

    assert writer.write("disconnect", WAIT_S, id=c, frontend_id=frontend)
    assert rows(engine, "SELECT count(*) FROM connections WHERE id = :c", c=c) == [(0,)]
    assert memberships(engine, c) == []
    assert writer.pending() == 0
    assert writer.healthy is True


def test_rejected_join_does_not_sink_the_batch(engine: Engine, frontend: str,
                                               writer: RegistryWriter) -> None:
    c, ghost = uid("c"), uid("ghost")
    g = uid("g")
    # all queued before the writer runs, so they land in one batch
    results = [
        writer.submit("connect", id=c, frontend_id=frontend, user_id="u"),
        writer.submit("join", connection_id=c, scope="s", group=g),
        writer.submit("join", connection_id=ghost, scope="s", group=g),
        writer.submit("join", connection_id=c, scope="s", group=g + "-2"),
    ]
    assert writer.pending() == 4
    writer.start()
    for r in results:
        r.wait(WAIT_S)
    assert [r.ready() for r in results] == [True, True, True, True]
    assert [r.successful() for r in results] == [True, True, False, True]
    assert isinstance(results[2].exception, IntegrityError)
    assert memberships(engine, c) == [("s", g), ("s", g + "-2")]
    assert memberships(engine, ghost) == []
    # write() raises for a rejected op and returns True for the others
    with pytest.raises(IntegrityError):
        writer.write("join", WAIT_S, connection_id=ghost, scope="s", group=g)
    assert writer.write("join", WAIT_S, connection_id=c, scope="s", group=g + "-3") is True
    assert writer.healthy is True


def test_a_malformed_op_does_not_kill_the_writer(engine: Engine, frontend: str,
                                                 writer: RegistryWriter) -> None:
    writer.start()
    bad = writer.submit("bogus")
    bad.wait(2)
    assert bad.ready() and not bad.successful()
    assert writer.write("connect", 2, id=uid("c"), frontend_id=frontend, user_id="u") is True


def test_flush_waits_for_queued_writes(engine: Engine, frontend: str,
                                       writer: RegistryWriter) -> None:
    cs = [uid("c") for _ in range(5)]
    for c in cs:
        writer.submit("connect", id=c, frontend_id=frontend, user_id="flush-user")
    writer.start()
    writer.flush(WAIT_S)
    assert rows(engine, "SELECT count(*) FROM connections WHERE frontend_id = :f", f=frontend) == [
        (5,)]


def test_open_keeps_the_user_within_its_limit(engine: Engine, frontend: str,
                                              writer: RegistryWriter) -> None:
    other = uid("fe")
    registry.register_frontend(engine, other, "host-o", None)
    try:
        user, gone = uid("user"), uid("c")
        # one attached elsewhere counts; a detached one (waiting for a resume) does not
        writer.start()
        writer.write("connect", WAIT_S, id=uid("c"), frontend_id=other, user_id=user)
        writer.write("connect", WAIT_S, id=gone, frontend_id=frontend, user_id=user)
        writer.write("detach", WAIT_S, id=gone, frontend_id=frontend)
        writer.stop(WAIT_S)

        fresh = RegistryWriter(engine)  # all queued first, so they land in one batch
        ids = [uid("c") for _ in range(4)]
        results = [fresh.submit("open", id=c, frontend_id=frontend, user_id=user, limit=3)
                   for c in ids[:3]]
        results.append(fresh.submit("open", id=ids[3], frontend_id=frontend,
                                    user_id=uid("user"), limit=3))  # someone else: fine
        joins = [fresh.submit("join", connection_id=c, scope="s", group="g") for c in ids]
        fresh.start()
        try:
            for r in results + joins:
                r.wait(WAIT_S)
            assert [r.ready() and r.successful() for r in results] == [True, True, False, True]
            assert isinstance(results[2].exception, registry.Refused)
            with pytest.raises(registry.Refused):
                registry.settled(results[2], WAIT_S)
            # the refused connection has no row, so its join fails alone
            assert [j.ready() and j.successful() for j in joins] == [True, True, False, True]
            assert registry.count_user_connections(engine, user) == 3
            assert registry.count_user_connections(engine, user, besides=ids[0]) == 2

            # a disconnect queued ahead of an open frees its slot within the same batch
            fresh.submit("disconnect", id=ids[0], frontend_id=frontend)
            assert fresh.write("open", WAIT_S, id=uid("c"), frontend_id=frontend,
                               user_id=user, limit=3)
            with pytest.raises(registry.Refused):
                fresh.write("open", WAIT_S, id=uid("c"), frontend_id=frontend, user_id=user,
                            limit=3)
        finally:
            fresh.stop(WAIT_S)
    finally:
        registry.deregister_frontend(engine, other)


def test_a_mixed_batch_keeps_each_connections_order(engine: Engine, frontend: str,
                                                    writer: RegistryWriter) -> None:
    a, b = uid("c"), uid("c")
    ops = [("open", {"id": a, "frontend_id": frontend, "user_id": "u", "limit": 20}),
           ("join", {"connection_id": a, "scope": "s", "group": "g1"}),
           ("open", {"id": b, "frontend_id": frontend, "user_id": "u", "limit": 20}),
           ("leave", {"connection_id": a, "scope": "s", "group": "g1"}),
           ("join", {"connection_id": b, "scope": "s", "group": "g1"}),
           ("join", {"connection_id": a, "scope": "s", "group": "g2"}),
           ("join", {"connection_id": a, "scope": "s", "group": "g1"}),
           ("detach", {"id": b, "frontend_id": frontend}),
           ("leave", {"connection_id": b, "scope": "s", "group": "g1"})]
    results = [writer.submit(kind, **params) for kind, params in ops]
    writer.start()
    for r in results:
        r.wait(WAIT_S)
    assert all(r.ready() and r.successful() for r in results)
    assert memberships(engine, a) == [("s", "g1"), ("s", "g2")]
    assert memberships(engine, b) == []
    assert attachment(engine, a) == [(frontend, False)]
    assert attachment(engine, b) == [(None, True)]


def test_a_batch_survives_its_connection_dying(engine: Engine, frontend: str,
                                               writer: RegistryWriter) -> None:
    held = writer._connection()  # what the writer keeps between batches of a storm
    backend = held.connection.driver_connection.info.backend_pid
    with engine.connect() as db:
        db.execute(text("SELECT pg_terminate_backend(:p)"), {"p": backend})
    c = uid("c")
    done = writer.submit("open", id=c, frontend_id=frontend, user_id="u", limit=20)
    writer.start()  # the first try fails on the dead connection; the retry takes a new one
    assert registry.settled(done, WAIT_S)
    assert attachment(engine, c) == [(frontend, False)]
    assert writer.healthy is True


def test_lookups(engine: Engine, frontend: str, writer: RegistryWriter) -> None:
    other = uid("fe")
    registry.register_frontend(engine, other, "host-o", None)
    try:
        scope, user = uid("scope"), uid("user")
        c1, c2, c3 = (uid("c") for _ in range(3))
        writer.start()
        for c, fe, u in ((c1, frontend, user), (c2, other, user), (c3, other, "someone")):
            writer.write("connect", WAIT_S, id=c, frontend_id=fe, user_id=u)
        writer.write("join", WAIT_S, connection_id=c2, scope=scope, group="room")
        writer.write("join", WAIT_S, connection_id=c1, scope=scope, group="room")
        writer.write("join", WAIT_S, connection_id=c1, scope=scope, group="lobby")
        writer.write("join", WAIT_S, connection_id=c3, scope=scope, group="lobby")

        # members come by connection id, so that they can be paged (``after``)
        room = sorted([{"connection_id": c2, "user_id": user, "frontend": other, "meta": {}},
                       {"connection_id": c1, "user_id": user, "frontend": frontend, "meta": {}}],
                      key=lambda m: m["connection_id"])
        assert registry.get_members(engine, scope, "room") == room
        assert registry.get_members(engine, scope, "room", limit=1) == room[:1]
        assert registry.get_members(engine, scope, "room", limit=1,
                                    after=room[0]["connection_id"]) == room[1:]
        assert registry.get_members(engine, scope, "room",
                                    after=room[1]["connection_id"]) == []
        assert registry.get_members(engine, scope, "empty") == []
        assert registry.which_groups(engine, scope) == [
            {"scope": scope, "group": "lobby", "members": 2},
            {"scope": scope, "group": "room", "members": 2}]
        everywhere = registry.which_groups(engine)
        assert [g for g in everywhere if g["scope"] == scope] == registry.which_groups(
            engine, scope)

        conns = registry.user_connections(engine, user)
        assert [(c["connection_id"], c["frontend"]) for c in conns] == [(c1, frontend),
                                                                         (c2, other)]
        assert isinstance(conns[0]["connected_at"], float)
        assert abs(conns[0]["connected_at"] - time.time()) < 300
        assert sorted(conns[0]["groups"], key=lambda g: g["group"]) == [
            {"scope": scope, "group": "lobby"}, {"scope": scope, "group": "room"}]
        assert conns[1]["groups"] == [{"scope": scope, "group": "room"}]
        assert registry.user_connections(engine, uid("nobody")) == []

        fronts = {f["id"]: f for f in registry.list_frontends(engine)}
        assert set(fronts[other]) == {"id", "host", "started_at", "heartbeat_at",
                                      "connections", "draining", "stats"}
        assert fronts[other]["stats"] is None  # written by its first heartbeat
        assert (fronts[other]["host"], fronts[other]["connections"],
                fronts[other]["draining"]) == ("host-o", 2, False)
        assert fronts[frontend]["connections"] == 1
        assert isinstance(fronts[other]["heartbeat_at"], float)
        assert fronts[other]["started_at"] <= fronts[other]["heartbeat_at"]
        ids = [f["id"] for f in registry.list_frontends(engine)]
        assert ids == sorted(ids)
    finally:
        registry.deregister_frontend(engine, other)


def test_list_frontends_counts_zero(engine: Engine, frontend: str) -> None:
    mine = [f for f in registry.list_frontends(engine) if f["id"] == frontend]
    assert len(mine) == 1
    assert (mine[0]["connections"], mine[0]["host"]) == (0, "host-1")


def test_membership_meta_joins_updates_and_reattaches(engine: Engine, frontend: str,
                                                      writer: RegistryWriter) -> None:
    writer.start()
    c, scope = uid("c"), uid("scope")
    writer.write("connect", WAIT_S, id=c, frontend_id=frontend, user_id="u")
    writer.write("join", WAIT_S, connection_id=c, scope=scope, group="g", meta='{"v": 1}')
    writer.write("join", WAIT_S, connection_id=c, scope=scope, group="h")  # no meta: {}
    assert [m["meta"] for m in registry.get_members(engine, scope, "g")] == [{"v": 1}]
    assert [m["meta"] for m in registry.get_members(engine, scope, "h")] == [{}]
    # two updates of one membership in one batch: the last one wins
    first = writer.submit("meta", connection_id=c, scope=scope, group="g", meta='{"v": 2}')
    writer.write("meta", WAIT_S, connection_id=c, scope=scope, group="g", meta='{"v": 3}')
    assert registry.settled(first, WAIT_S)
    assert [m["meta"] for m in registry.get_members(engine, scope, "g")] == [{"v": 3}]
    # a server-side join with a meta replaces it; without one, leaves it
    assert registry.add_membership(engine, c, scope, "g", {"v": 4})
    assert registry.add_membership(engine, c, scope, "g")
    assert [m["meta"] for m in registry.get_members(engine, scope, "g")] == [{"v": 4}]
    assert writer.write("detach", WAIT_S, id=c, frontend_id=frontend)
    groups, _, _ = registry.reattach(engine, c, "u", frontend, 0) or ([], None, 0)
    assert groups == [(scope, "g", {"v": 4}), (scope, "h", {})]
