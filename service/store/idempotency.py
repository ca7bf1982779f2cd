"""Idempotent publish: a publisher's key claims the log id of its first publish.

The keys share ``message_keys`` with the task outcomes' dedupe keys (one primary key, so
a claim is one ``INSERT ... ON CONFLICT``), under a prefix of their own and a namespace
per caller (a fingerprint of the API key, or the Python API's own), so two tenants' keys
never collide. A claim older than the TTL is taken over by the next publish with that key
(a new message), whether or not the beat's prune has deleted it yet.

Concurrent repeats of one key, on any frontend, serialise on the key's row: Postgres makes
the second ``INSERT`` wait for the first transaction, then finds the row claimed and the
caller answers the first id without publishing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, Text, bindparam, cast, func, select
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.exc import DataError

from service.core.errors import BadRequest
from service.store import durability
from service.store.messagelog import MESSAGE_ID_SEQ, NUL_ERROR, Entry, json_text
from service.store.models import Message, MessageKey

#: Longest idempotency key a publisher may send (a UUID is 36; Stripe allows 255).
KEY_MAX_LEN = 128
#: Printable ASCII without spaces: UUIDs, ULIDs, hashes and "order-42:paid" all fit.
_KEY_RE = re.compile(rf"[\x21-\x7e]{{1,{KEY_MAX_LEN}}}")
#: What every idempotency key is stored under (task outcomes use "task:").
PREFIX = "idem:"  # (partitions.IDEM_LIKE prunes by it)
#: The namespace of keys given through the Python API (``service.pg.Herald``).
PYTHON_NAMESPACE = "py"
#: Hex digits of the API key's SHA-256 that name its namespace (64 bits: no collisions
#: between a deployment's handful of keys, and the key itself is never stored).
_FINGERPRINT_HEX = 16
#: Default of HERALD_IDEMPOTENCY_TTL (24 h, as Stripe's; also the log's default retention).
DEFAULT_TTL_S = 24 * 3600


def namespace_of_api_key(api_key: str) -> str:
    """The namespace of an API key's idempotency keys (rotating the key starts a new one)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:_FINGERPRINT_HEX]


def scoped(namespace: str, key: str, field: str = "Idempotency-Key") -> str:
    """Check a publisher's key and return it as stored; a clear 400 when it is unusable."""
    if not _KEY_RE.fullmatch(key):
        raise BadRequest(f"{field} must be 1-{KEY_MAX_LEN} printable ASCII characters "
                         "without spaces (e.g. a UUID)")
    return f"{PREFIX}{namespace}:{key}"


def _insert_many() -> Any:
    return insert(Message).values(
        id=bindparam("i"), target_kind=bindparam("k"), target_key=bindparam("key"),
        event=bindparam("e"), data=cast(bindparam("d", type_=Text), JSONB),
        origin=bindparam("o"))


#: A keyed entry's outcome: (log id, True when this call logged it), or its own refusal.
Claim = tuple[int, bool] | BadRequest


def append_keyed(engine: Engine, origin: str, entries: Sequence[Entry],
                 keys: Sequence[str | None], ttl_s: float) -> list[Claim]:
    """Log ``entries`` in one transaction; an entry whose (scoped) key was claimed within
    ``ttl_s`` gets the claimed id and is not logged again (nor, by the caller, sent).

    Two entries of one call with the same key: the second answers the first's id. A bad
    entry (bad UTF-8, a \\u0000) gets its BadRequest and claims nothing."""
    out: list[Claim | None] = []
    texts: list[str | None] = []
    for entry in entries:
        try:
            texts.append(json_text(entry.data))
            out.append(None)
        except BadRequest as exc:
            texts.append(None)
            out.append(exc)
    todo = [i for i, c in enumerate(out) if c is None]
    if not todo:
        return [c for c in out if c is not None]
    try:
        done = _claim_and_log(engine, origin, entries, keys, texts, todo, ttl_s)
    except DataError:
        if len(todo) == 1:
            done = {todo[0]: BadRequest(NUL_ERROR)}
        else:  # one row Postgres refused spoils the transaction: one at a time
            done = {i: append_keyed(engine, origin, [entries[i]], [keys[i]], ttl_s)[0]
                    for i in todo}
    return [c if c is not None else done[i] for i, c in enumerate(out)]


def _claim_and_log(engine: Engine, origin: str, entries: Sequence[Entry],
                   keys: Sequence[str | None], texts: Sequence[str | None],
                   todo: list[int], ttl_s: float) -> dict[int, Claim]:
    with engine.begin() as db:
        durability.commit_at(db, durability.LOG)  # a 202 survives a failover
        ids = [int(i) for i in db.execute(
            select(func.nextval(MESSAGE_ID_SEQ)).select_from(
                func.generate_series(1, len(todo)))).scalars()]
        first: dict[str, int] = {}  # key -> the entry of this call that claims it
        for i in todo:
            key = keys[i]
            if key is not None:
                first.setdefault(key, i)
        given = dict(zip(todo, ids, strict=True))
        claimed: dict[str, int] = {}
        if first:
            # sorted: two calls claiming overlapping keys lock them in one order (no deadlock)
            rows = [{"key": k, "message_id": given[first[k]]} for k in sorted(first)]
            stmt = insert(MessageKey).values(rows)
            stmt = stmt.on_conflict_do_update(
                index_elements=[MessageKey.key],
                set_={"message_id": stmt.excluded.message_id, "created_at": func.now()},
                where=MessageKey.created_at < func.now() - timedelta(seconds=ttl_s))
            claimed = {k: int(m) for k, m in db.execute(
                stmt.returning(MessageKey.key, MessageKey.message_id))}
            taken = [k for k in first if k not in claimed]
            if taken:
                claimed.update({k: int(m) for k, m in db.execute(
                    select(MessageKey.key, MessageKey.message_id)
                    .where(MessageKey.key.in_(taken)))})
        done: dict[int, Claim] = {}
        rows = []
        for i in todo:
            key, entry = keys[i], entries[i]
            fresh = key is None or (first[key] == i and claimed[key] == given[i])
            done[i] = (given[i] if key is None else claimed[key], fresh)
            if fresh:
                rows.append({"i": given[i], "k": entry.target.kind,
                             "key": entry.target.log_key(), "e": entry.event,
                             "d": texts[i], "o": origin})
        if rows:
            db.execute(_insert_many(), rows)
    return done
