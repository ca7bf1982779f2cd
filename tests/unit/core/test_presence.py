"""MonitorState: each join and leave reported once, whatever order snapshot and live take."""

from __future__ import annotations

from typing import Any

import pytest

from service.core.errors import BadRequest
from service.core.presence import MonitorState, PresenceData, check_meta, coalesce


def m(cid: str, fe: str = "A") -> dict[str, str]:
    return {"connection_id": cid, "user_id": "u", "frontend": fe}


def ids(members: list[dict[str, Any]]) -> list[str]:
    return [x["connection_id"] for x in members]


def test_changes_buffered_during_the_snapshot_are_filtered_against_it() -> None:
    state = MonitorState()
    assert state.pending == []
    state.pending.append(PresenceData(joins=[m("c1")]))          # also in the snapshot
    state.pending.append(PresenceData(joins=[m("c2")]))          # joined after it
    state.pending.append(PresenceData(leaves=[m("c0")]))         # left before it
    news = state.snapshot([m("c1")])
    assert state.pending is None
    assert [ids(n.joins) for n in news] == [["c2"]]
    assert state.known == {"c1": "A", "c2": "A"}


def test_live_changes_once_each() -> None:
    state = MonitorState()
    state.snapshot([m("c1")])
    assert ids(state.filter(PresenceData(joins=[m("c1")])).joins) == []      # known
    assert ids(state.filter(PresenceData(leaves=[m("c9")])).leaves) == []    # unknown
    assert ids(state.filter(PresenceData(leaves=[m("c1")])).leaves) == ["c1"]
    assert ids(state.filter(PresenceData(leaves=[m("c1")])).leaves) == []    # twice: once
    same = PresenceData(joins=[m("c3")])
    assert state.filter(same) is same  # nothing dropped: the shared frame can be reused


def test_a_resume_on_another_frontend_is_reported_and_a_stale_leave_is_not() -> None:
    state = MonitorState()
    state.snapshot([m("c1", "A")])
    moved = state.filter(PresenceData(joins=[m("c1", "B")]))
    assert ids(moved.joins) == ["c1"] and state.known["c1"] == "B"
    # the dead frontend's leave for it (if one still comes) no longer applies
    assert ids(state.filter(PresenceData(leaves=[m("c1", "A")])).leaves) == []
    assert ids(state.filter(PresenceData(leaves=[m("c1", "B")])).leaves) == ["c1"]


def mm(cid: str, meta: dict[str, object], fe: str = "A") -> dict[str, object]:
    return {"connection_id": cid, "user_id": "u", "frontend": fe, "meta": meta}


def test_updates_pass_only_for_connections_the_monitor_knows_there() -> None:
    state = MonitorState()
    state.snapshot([m("c1")])
    news = state.filter(PresenceData(updates=[mm("c1", {"s": 1}), mm("c2", {"s": 1}),
                                              mm("c1", {"s": 2}, fe="B")]))
    assert [(u["connection_id"], u["meta"]) for u in news.updates] == [("c1", {"s": 1})]


def test_coalesce_keeps_each_connections_net_change_with_its_latest_meta() -> None:
    changes = [PresenceData(joins=[mm("a", {"v": 1})]),            # a: join, update
               PresenceData(updates=[mm("a", {"v": 2})]),
               PresenceData(joins=[mm("b", {})]),                   # b: join, leave
               PresenceData(leaves=[mm("b", {})]),
               PresenceData(leaves=[mm("c", {"v": 1})]),            # c: leave, rejoin
               PresenceData(joins=[mm("c", {"v": 3})]),
               PresenceData(updates=[mm("d", {"v": 1})]),           # d: update, leave
               PresenceData(leaves=[mm("d", {"v": 1})]),
               PresenceData(updates=[mm("e", {"v": 1})]),           # e: two updates
               PresenceData(updates=[mm("e", {"v": 2})])]
    net = coalesce(changes)
    assert [(j["connection_id"], j["meta"]) for j in net.joins] == [("a", {"v": 2})]
    assert ids(net.leaves) == ["b", "d"]  # b's leave kept: a snapshot may have seen b
    assert [(u["connection_id"], u["meta"]) for u in net.updates] == [("c", {"v": 3}),
                                                                      ("e", {"v": 2})]
    # every connection once: the order of joins, leaves and updates cannot matter
    every = ids(net.joins) + ids(net.leaves) + ids(net.updates)
    assert len(every) == len(set(every)) == 5


def test_a_monitor_applying_coalesced_changes_ends_where_one_by_one_does() -> None:
    changes = [PresenceData(joins=[mm(f"c{i}", {"i": i})]) for i in range(50)]
    changes += [PresenceData(leaves=[mm(f"c{i}", {})]) for i in range(0, 50, 2)]
    changes += [PresenceData(updates=[mm(f"c{i}", {"i": -i})]) for i in range(1, 50, 2)]
    one, batched = MonitorState(), MonitorState()
    one.snapshot([])
    batched.snapshot([])
    for change in changes:
        one.filter(change)
    batched.filter(coalesce(changes))
    assert one.known == batched.known == {f"c{i}": "A" for i in range(1, 50, 2)}


def test_meta_is_a_json_object_within_the_limit() -> None:
    assert check_meta({"status": "away"}, 64) == {"status": "away"}
    with pytest.raises(BadRequest, match="HERALD_MAX_META=16"):
        check_meta({"status": "x" * 20}, 16)
    with pytest.raises(BadRequest, match="JSON object"):
        check_meta(["not", "an", "object"], 1024)
