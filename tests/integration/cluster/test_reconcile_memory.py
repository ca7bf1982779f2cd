"""A frontend writes its registry rows again from its sockets when Postgres is a different
server (a failover) and after a sweep: frontends on the in-memory bus, the registry in
the real Postgres."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from service.cluster.frontend import Frontend
from service.store import registry
from tests.fakes import socket_on, wait


@pytest.fixture
def node(database: str) -> Iterator[Frontend]:
    from service.core.config import Settings

    settings = dataclasses.replace(Settings.from_env(),
                                   broker_url=f"memory://test-{uuid.uuid4().hex[:8]}",
                                   frontend_id=f"rc-{uuid.uuid4().hex[:6]}", heartbeat_s=0.2)
    fe = Frontend(settings)
    fe.start()
    wait(lambda: fe.consumer.connected and fe.registered)
    yield fe
    fe.stop()


def members(fe: Frontend, group: str) -> set[str]:
    return {m["connection_id"] for m in registry.get_members(fe.engine, "default", group)}


def test_a_different_server_gets_the_live_sockets_written_again(node: Frontend) -> None:
    group = f"g-{uuid.uuid4().hex[:6]}"
    conns = [socket_on(node, f"u{i}") for i in range(3)]
    for conn in conns:
        node.join(conn, ("default", group))
    assert members(node, group) == {c.id for c in conns}
    # what a promoted standby lacks when the old primary acknowledged writes it never sent
    with node.engine.begin() as db:
        db.execute(text("DELETE FROM connections WHERE id = :c"), {"c": conns[0].id})
        db.execute(text("DELETE FROM memberships WHERE connection_id = :c"), {"c": conns[1].id})
    assert members(node, group) == {conns[2].id}
    node._server = "an earlier server"  # as if the heartbeat had reached another one
    wait(lambda: members(node, group) == {c.id for c in conns})


def test_a_frontend_swept_while_alive_gets_its_sockets_back(node: Frontend) -> None:
    from workers.maintenance import sweep_dead_frontends

    group = f"g-{uuid.uuid4().hex[:6]}"
    conns = [socket_on(node, f"u{i}") for i in range(2)]
    for conn in conns:
        node.join(conn, ("default", group))
    # silent past the sweep's cut-off (a long outage); no greenlet runs until wait() below,
    # so its heartbeat cannot come in between
    with node.engine.begin() as db:
        db.execute(text("UPDATE frontends SET heartbeat_at = now() - interval '1 hour' "
                        "WHERE id = :f"), {"f": node.id})
    assert sweep_dead_frontends(node.engine, node.settings.heartbeat_s)
    assert members(node, group) == set()
    wait(lambda: members(node, group) == {c.id for c in conns})
