"""Issue 3: the registry tells the truth when a frontend dies."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.store.models import ConnectionRecord, FrontendRecord
from tests.support import Client, wait_until


def _frontend_rows(engine: Any, fid: str) -> tuple[int, int]:
    with Session(engine) as db:
        fe = db.execute(select(FrontendRecord).where(FrontendRecord.id == fid)).all()
        conns = db.execute(select(ConnectionRecord)
                           .where(ConnectionRecord.frontend_id == fid)).all()
    return len(fe), len(conns)


def _leaves(mon: Client) -> list[str]:
    return [m["connection_id"] for f in mon.frames if f.get("op") == "presence"
            for m in f["leaves"]]


def test_sigkilled_frontend_is_swept_and_monitors_see_leaves(cluster: Any, token: Any,
                                                             engine: Any) -> None:
    room = f"room-{uuid.uuid4().hex[:6]}"
    a, b = cluster.frontends("a", "b")
    cluster.worker()
    cluster.beat()
    mon = Client(a.ws_url)
    mon.hello(token("watcher"))
    mon.request("monitor", group=room)
    victims = [Client(b.ws_url) for _ in range(4)]
    ids = set()
    fid = ""
    for v in victims:
        w = v.hello(token(f"v-{uuid.uuid4().hex[:4]}"))
        ids.add(w["connection_id"])
        fid = w["frontend"]
        v.request("join", group=room)
        v.request("join", group=room, scope="elsewhere")
    assert _frontend_rows(engine, fid) == (1, 4)

    b.kill()
    wait_until(lambda: _frontend_rows(engine, fid) == (0, 0), timeout=30)
    wait_until(lambda: set(_leaves(mon)) == ids, timeout=30)
    assert sorted(_leaves(mon)) == sorted(ids)  # each once
    members = mon.request("members", group=room)["members"]
    assert members == []


def test_restart_with_same_id_cleans_up_its_old_rows(cluster: Any, token: Any,
                                                     engine: Any) -> None:
    room = f"room-{uuid.uuid4().hex[:6]}"
    fixed = {"HERALD_FRONTEND_ID": f"fixed-{uuid.uuid4().hex[:6]}",
             "HERALD_HEARTBEAT": "60"}  # no sweep can happen during this test
    a = cluster.frontend("a")
    b = cluster.frontend("b", env=fixed)
    mon = Client(a.ws_url)
    mon.hello(token("watcher"))
    mon.request("monitor", group=room)
    v = Client(b.ws_url)
    vid = v.hello(token("victim"))["connection_id"]
    v.request("join", group=room)
    b.kill()
    assert _frontend_rows(engine, fixed["HERALD_FRONTEND_ID"]) == (1, 1)

    cluster.frontend("b2", env=fixed)
    wait_until(lambda: _frontend_rows(engine, fixed["HERALD_FRONTEND_ID"]) == (1, 0))
    wait_until(lambda: _leaves(mon) == [vid])
