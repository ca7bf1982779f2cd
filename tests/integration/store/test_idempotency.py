"""service.store.idempotency against this run's real Postgres: claims, races, expiry,
namespaces and the prune."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec
import pytest
from sqlalchemy import Engine, text

from service.core.envelope import Target
from service.core.errors import BadRequest
from service.store import partitions
from service.store.idempotency import append_keyed, namespace_of_api_key, scoped
from service.store.messagelog import Entry
from tests.support import in_threads

TTL_S = 3600.0


def key(ns: str = "t") -> str:
    return scoped(ns, uuid.uuid4().hex)


def entry(n: int) -> Entry:
    return Entry(Target.all(), "e", msgspec.Raw(str(n).encode()))


def logged(engine: Engine, ids: list[int]) -> list[int]:
    with engine.connect() as db:
        return list(db.execute(text("SELECT id FROM messages WHERE id = ANY(:ids) ORDER BY id"),
                               {"ids": ids}).scalars())


def test_a_repeat_answers_the_first_id_and_logs_nothing(engine: Engine) -> None:
    k = key()
    [(first, fresh)] = append_keyed(engine, "o", [entry(1)], [k], TTL_S)  # type: ignore[misc]
    [(again, fresh2)] = append_keyed(engine, "o", [entry(2)], [k], TTL_S)  # type: ignore[misc]
    assert (again, fresh, fresh2) == (first, True, False)
    assert logged(engine, [first]) == [first]
    with engine.connect() as db:
        assert db.execute(text("SELECT data FROM messages WHERE id = :i"),
                          {"i": first}).scalar() == 1  # the first one's data stays


def test_a_batch_mixes_keys_repeats_and_unkeyed_entries(engine: Engine) -> None:
    k1, k2 = key(), key()
    [(old, _)] = append_keyed(engine, "o", [entry(0)], [k1], TTL_S)  # type: ignore[misc]
    claims = append_keyed(engine, "o", [entry(i) for i in range(5)],
                          [k1, None, k2, k2, None], TTL_S)
    assert not any(isinstance(c, BadRequest) for c in claims)
    ids = [c[0] for c in claims if not isinstance(c, BadRequest)]
    fresh = [c[1] for c in claims if not isinstance(c, BadRequest)]
    assert ids[0] == old and ids[3] == ids[2]  # a repeat within one batch too
    assert fresh == [False, True, True, False, True]
    assert ids[1] < ids[2] < ids[4]  # new ones in entry order
    assert logged(engine, ids[1:]) == sorted({ids[1], ids[2], ids[4]})


def test_a_bad_entry_claims_nothing_and_spoils_nothing(engine: Engine) -> None:
    k_bad, k_ok = key(), key()
    bad = Entry(Target.all(), "e", msgspec.Raw(b'"nul \\u0000"'))
    claims = append_keyed(engine, "o", [bad, entry(1)], [k_bad, k_ok], TTL_S)
    assert isinstance(claims[0], BadRequest) and not isinstance(claims[1], BadRequest)
    [(later, fresh)] = append_keyed(engine, "o", [entry(2)], [k_bad], TTL_S)  # type: ignore[misc]
    assert fresh and later != claims[1][0]


def test_namespaces_keep_tenants_apart(engine: Engine) -> None:
    raw = uuid.uuid4().hex
    a, b = namespace_of_api_key("key-of-tenant-a"), namespace_of_api_key("key-of-tenant-b")
    assert a != b and "key-of" not in a
    [(ida, _)] = append_keyed(engine, "o", [entry(1)], [scoped(a, raw)], TTL_S)  # type: ignore[misc]
    [(idb, fb)] = append_keyed(engine, "o", [entry(1)], [scoped(b, raw)], TTL_S)  # type: ignore[misc]
    assert ida != idb and fb


def test_after_the_ttl_the_key_makes_a_new_message(engine: Engine) -> None:
    k = key()
    [(first, _)] = append_keyed(engine, "o", [entry(1)], [k], TTL_S)  # type: ignore[misc]
    with engine.begin() as db:  # as if the claim were two hours old
        db.execute(text("UPDATE message_keys SET created_at = now() - interval '2 hours' "
                        "WHERE key = :k"), {"k": k})
    [(second, fresh)] = append_keyed(engine, "o", [entry(2)], [k], TTL_S)  # type: ignore[misc]
    assert fresh and second > first
    [(third, again)] = append_keyed(engine, "o", [entry(3)], [k], TTL_S)  # type: ignore[misc]
    assert (third, again) == (second, False)


def test_concurrent_repeats_log_one_message(engine: Engine) -> None:
    k = key()
    results: list[tuple[int, bool]] = []

    def work(i: int) -> None:
        [claim] = append_keyed(engine, f"o{i}", [entry(i)], [k], TTL_S)
        assert not isinstance(claim, BadRequest)
        results.append(claim)

    in_threads(work, 8)
    assert len(results) == 8
    assert len({r[0] for r in results}) == 1
    assert sum(r[1] for r in results) == 1
    assert logged(engine, [results[0][0]]) == [results[0][0]]


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "é", "line\n", "tab\t"])
def test_unusable_keys_are_refused_with_the_limit(bad: str) -> None:
    with pytest.raises(BadRequest, match="1-128 printable ASCII"):
        scoped("t", bad)


def test_prune_deletes_expired_idempotency_keys_only(engine: Engine) -> None:
    idem_old, idem_new = key(), key()
    task_key, task_old = (f"task:{uuid.uuid4().hex}:outcome" for _ in range(2))
    with engine.begin() as db:
        for k, age in ((idem_old, "2 hours"), (idem_new, "1 minute"), (task_key, "2 hours"),
                       (task_old, "2 days")):
            db.execute(text("INSERT INTO message_keys (key, message_id, created_at) "
                            "VALUES (:k, 1, now() - CAST(:age AS interval))"),
                       {"k": k, "age": age})
    partitions.maintain(engine, 24 * 3600, datetime.now(UTC), idempotency_ttl_s=3600)
    with engine.connect() as db:
        left = set(db.execute(text("SELECT key FROM message_keys WHERE key = ANY(:k)"),
                              {"k": [idem_old, idem_new, task_key, task_old]}).scalars())
    assert left == {idem_new, task_key}  # task keys live as long as the log
