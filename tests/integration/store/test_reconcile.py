"""The registry writer's reconcile against this run's real Postgres: a frontend's rows made
to match the sockets it holds, whatever writes were lost (a failover, a sweep)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from service.store import registry
from service.store.registry import RegistryWriter

WAIT_S = 30.0


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def rows(engine: Engine, sql: str, **params: Any) -> set[tuple[Any, ...]]:
    with engine.connect() as db:
        return {tuple(r) for r in db.execute(text(sql), params)}


@pytest.fixture
def frontends(engine: Engine) -> Iterator[tuple[str, str]]:
    ours, theirs = uid("fe"), uid("fe")
    for fid in (ours, theirs):
        registry.register_frontend(engine, fid, "h", None)
    yield ours, theirs
    for fid in (ours, theirs):
        registry.deregister_frontend(engine, fid)


@pytest.fixture
def writer(engine: Engine) -> Iterator[RegistryWriter]:
    w = RegistryWriter(engine)
    w.start()
    yield w
    w.stop(timeout_s=WAIT_S)


def test_reconcile_repairs_every_kind_of_lost_write(engine: Engine, frontends: tuple[str, str],
                                                    writer: RegistryWriter) -> None:
    ours, theirs = frontends
    a, b, c, d, r, moved = (uid(n) for n in ("a", "b", "c", "d", "r", "moved"))
    g, lost, gone = uid("g"), uid("g"), uid("g")
    for conn, fe in ((a, ours), (b, ours), (c, ours), (r, ours), (moved, theirs)):
        assert writer.write("connect", WAIT_S, id=conn, frontend_id=fe, user_id="u-" + conn)
    for conn, group in ((a, g), (a, gone), (r, g), (moved, g)):
        assert writer.write("join", WAIT_S, connection_id=conn, scope="s", group=group)
    assert writer.write("detach", WAIT_S, id=b, frontend_id=ours)  # b resumed; that was lost
    # the hub: a in g and lost (its leave of gone and its join of lost were lost), b back,
    # c gone (its disconnect was lost), d new (its open was lost), r being resumed right
    # now, and a stale socket of moved, which resumed on the other frontend
    hub = {a: [g, lost], b: [g], d: [g], moved: [g]}
    members = [(conn, group) for conn, groups in hub.items() for group in groups]
    assert writer.write("reconcile", WAIT_S, frontend_id=ours, keep=[*hub, r], ids=list(hub),
                        users=["u-" + conn for conn in hub], gens=[0] * len(hub),
                        mids=[m[0] for m in members],
                        scopes=["s"] * len(members), groups=[m[1] for m in members])

    attached = rows(engine, "SELECT id, frontend_id, detached_at IS NOT NULL FROM connections "
                    "WHERE id = ANY(:ids)", ids=[a, b, c, d, r, moved])
    assert attached == {(a, ours, False), (b, ours, False), (c, None, True), (d, ours, False),
                        (r, ours, False), (moved, theirs, False)}
    groups = rows(engine, "SELECT connection_id, group_name FROM memberships "
                  "WHERE connection_id = ANY(:ids)", ids=[a, b, c, d, r, moved])
    assert groups == {(a, g), (a, lost), (b, g), (d, g), (r, g), (moved, g)}
    assert {m["connection_id"] for m in registry.get_members(engine, "s", g)} == {
        a, b, d, r, moved}


def test_reconcile_never_takes_back_a_session_resumed_since(
        engine: Engine, frontends: tuple[str, str], writer: RegistryWriter) -> None:
    """A socket cut off while its session was resumed elsewhere (and that socket then
    dropped, detaching the row) holds an old resume generation: the row stays detached."""
    ours, _ = frontends
    stale, live = uid("stale"), uid("live")
    for conn in (stale, live):
        assert writer.write("connect", WAIT_S, id=conn, frontend_id=ours, user_id="u-" + conn)
    with engine.begin() as db:  # what a resume elsewhere, then that socket's drop, leave
        db.execute(text("UPDATE connections SET resume_gen = resume_gen + 1, "
                        "frontend_id = NULL, detached_at = now() WHERE id = :id"), {"id": stale})
        db.execute(text("UPDATE connections SET frontend_id = NULL, detached_at = now() "
                        "WHERE id = :id"), {"id": live})  # a sweep
    assert writer.write("reconcile", WAIT_S, frontend_id=ours, keep=[stale, live],
                        ids=[stale, live], users=["u-" + stale, "u-" + live], gens=[0, 0],
                        mids=[], scopes=[], groups=[])
    assert registry.owners(engine, [stale, live]) == {stale: None, live: ours}


def test_reconcile_writes_back_the_metas_the_hub_holds(
        engine: Engine, frontends: tuple[str, str], writer: RegistryWriter) -> None:
    ours, _ = frontends
    a, g, lost = uid("a"), uid("g"), uid("g")
    assert writer.write("connect", WAIT_S, id=a, frontend_id=ours, user_id="u-" + a)
    assert writer.write("join", WAIT_S, connection_id=a, scope="s", group=g, meta='{"v": 1}')
    # the hub: a in g with meta v2 (its update was lost) and in lost (its join was lost)
    assert writer.write("reconcile", WAIT_S, frontend_id=ours, keep=[a], ids=[a],
                        users=["u-" + a], gens=[0], mids=[a, a], scopes=["s", "s"],
                        groups=[g, lost], metas=['{"v": 2}', '{"v": 3}'])
    metas = rows(engine, "SELECT group_name, meta->>'v' FROM memberships "
                 "WHERE connection_id = :a", a=a)
    assert metas == {(g, "2"), (lost, "3")}
