"""MonitorState: each join and leave reported once, whatever order snapshot and live take."""

from __future__ import annotations

from service.core.presence import MonitorState, PresenceData


def m(cid: str, fe: str = "A") -> dict[str, str]:
    return {"connection_id": cid, "user_id": "u", "frontend": fe}


def ids(members: list[dict[str, str]]) -> list[str]:
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
