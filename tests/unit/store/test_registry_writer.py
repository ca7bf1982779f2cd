"""How the registry writer groups a batch into statements (no database needed)."""

from __future__ import annotations

from typing import Any

from gevent.event import AsyncResult

from service.store.registry_writer import Op, _runs


def op(kind: str, conn: str, **params: Any) -> Op:
    key = "id" if kind in ("open", "connect", "detach", "disconnect") else "connection_id"
    return Op(kind, {key: conn, **params}, AsyncResult())


def shape(batch: list[Op]) -> list[tuple[str, list[str]]]:
    return [(kind, [o.params.get("id", o.params.get("connection_id")) for o in ops])
            for kind, ops in _runs(batch)]


def test_a_storm_of_opens_and_joins_is_two_statements() -> None:
    batch = []
    for c in ("a", "b", "c"):
        batch += [op("open", c), op("join", c, group="g")]
    batch.append(op("join", "old", group="g"))  # opened in an earlier batch
    assert shape(batch) == [("open", ["a", "b", "c"]), ("join", ["old"]),
                            ("join", ["a", "b", "c"])]


def test_each_connection_keeps_its_order() -> None:
    batch = [op("join", "a", group="g"), op("leave", "a", group="g"),
             op("join", "a", group="g"), op("join", "a", group="h"), op("detach", "a"),
             op("leave", "b", group="g")]
    assert shape(batch) == [("leave", ["b"]), ("join", ["a"]), ("leave", ["a"]),
                            ("join", ["a", "a"]), ("detach", ["a"])]


def test_an_open_waits_for_a_disconnect_queued_ahead_of_it() -> None:
    batch = [op("join", "x", group="g"), op("disconnect", "x"), op("open", "y"),
             op("open", "z")]
    assert shape(batch) == [("join", ["x"]), ("disconnect", ["x"]), ("open", ["y", "z"])]


def reconcile() -> Op:
    return Op("reconcile", {"frontend_id": "fe"}, AsyncResult())


def test_a_reconcile_runs_alone_between_what_was_queued_before_and_after_it() -> None:
    # it reads the whole hub: nothing queued after it may run before it, nor the reverse
    batch = [op("open", "a"), op("join", "a", group="g"), reconcile(), op("open", "b"),
             op("join", "a", group="h"), op("leave", "c", group="g")]
    assert [kind for kind, _ in _runs(batch)] == ["open", "join", "reconcile", "leave",
                                                  "open", "join"]
    assert shape(batch)[3:] == [("leave", ["c"]), ("open", ["b"]), ("join", ["a"])]


def test_two_reconciles_stay_two_waves() -> None:
    batch = [reconcile(), op("join", "a", group="g"), reconcile()]
    assert [kind for kind, _ in _runs(batch)] == ["reconcile", "join", "reconcile"]
