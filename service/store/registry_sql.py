"""The registry writer's statements: one per kind of operation, whatever the row count.

The rows travel as arrays and ``unnest`` turns them back into a table, so the SQL text
never changes and psycopg prepares it once; executemany (a round of Python per row) or a
multi-row VALUES (compiled anew for each row count) cost several times as much for the
batches a storm makes. Each function queues its statement on the writer's psycopg
connection, in pipeline mode (see ``RegistryWriter._apply``): a whole batch, from BEGIN
to COMMIT, is one round trip to Postgres.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg import Connection, Cursor

Rows = list[dict[str, Any]]
DB = Connection[Any]

CONNECT = """
INSERT INTO connections (id, frontend_id, user_id)
SELECT * FROM unnest(CAST(%(ids)s AS text[]), CAST(%(frontends)s AS text[]),
                     CAST(%(users)s AS text[]))
ON CONFLICT DO NOTHING
"""

# Serialises opens of one user across frontends until commit, so two frontends cannot
# both count the same free slot (keys taken in order: no deadlock between batches).
LOCK_USERS = """
SELECT pg_advisory_xact_lock(k) FROM (
    SELECT DISTINCT hashtextextended(u, 0) AS k FROM unnest(CAST(%(users)s AS text[])) AS u
    ORDER BY k) AS keys
"""

# A new connection's row, inserted only while its user holds fewer attached connections
# than its limit: the ones already committed plus those earlier in this same statement.
OPEN = """
WITH new AS (
    SELECT n.id, n.frontend_id, n.user_id, n.max_n,
           row_number() OVER (PARTITION BY n.user_id ORDER BY n.ord) AS nth
    FROM unnest(CAST(%(ids)s AS text[]), CAST(%(frontends)s AS text[]),
                CAST(%(users)s AS text[]), CAST(%(limits)s AS bigint[]))
         WITH ORDINALITY AS n(id, frontend_id, user_id, max_n, ord)
), held AS (
    SELECT user_id, count(*) AS n FROM connections
    WHERE frontend_id IS NOT NULL AND user_id IN (SELECT user_id FROM new)
    GROUP BY user_id
)
INSERT INTO connections (id, frontend_id, user_id)
SELECT new.id, new.frontend_id, new.user_id FROM new LEFT JOIN held USING (user_id)
WHERE coalesce(held.n, 0) + new.nth <= new.max_n
ON CONFLICT DO NOTHING
RETURNING id
"""

# guarded by frontend: a connection resumed elsewhere meanwhile is not ours to touch
DISCONNECT = """
DELETE FROM connections AS c
USING unnest(CAST(%(ids)s AS text[]), CAST(%(frontends)s AS text[])) AS x(id, frontend_id)
WHERE c.id = x.id AND c.frontend_id = x.frontend_id
"""

# the socket dropped without a goodbye: keep the row and its groups for a resume
DETACH = """
UPDATE connections AS c SET frontend_id = NULL, detached_at = now()
FROM unnest(CAST(%(ids)s AS text[]), CAST(%(frontends)s AS text[])) AS x(id, frontend_id)
WHERE c.id = x.id AND c.frontend_id = x.frontend_id
"""

JOIN = """
INSERT INTO memberships (connection_id, scope, group_name, meta)
SELECT x.connection_id, x.scope, x.group_name, CAST(x.meta AS jsonb)
FROM unnest(CAST(%(ids)s AS text[]), CAST(%(scopes)s AS text[]),
            CAST(%(groups)s AS text[]), CAST(%(metas)s AS text[]))
     AS x(connection_id, scope, group_name, meta)
ON CONFLICT DO NOTHING
"""

LEAVE = """
DELETE FROM memberships AS m
USING unnest(CAST(%(ids)s AS text[]), CAST(%(scopes)s AS text[]),
             CAST(%(groups)s AS text[])) AS x(connection_id, scope, group_name)
WHERE m.connection_id = x.connection_id AND m.scope = x.scope
  AND m.group_name = x.group_name
"""


# --- reconcile: the registry made to match a frontend's live sockets ------------------

# rows of sockets this frontend no longer holds (their disconnect or detach was lost):
# detached, as after a crash, for a resume elsewhere
RECONCILE_GONE = """
UPDATE connections SET frontend_id = NULL, detached_at = now()
WHERE frontend_id = %(frontend)s AND NOT (id = ANY(CAST(%(keep)s AS text[])))
"""

# rows of its live sockets: inserted when missing (a lost open), attached again when
# detached (a lost resume, a sweep); never taken from another frontend (resumed there),
# nor one resumed since on another socket, even if that one has gone too (its resume
# generation moved on)
RECONCILE_LIVE = """
INSERT INTO connections (id, frontend_id, user_id, resume_gen)
SELECT x.id, %(frontend)s, x.user_id, x.gen
FROM unnest(CAST(%(ids)s AS text[]), CAST(%(users)s AS text[]),
            CAST(%(gens)s AS integer[])) AS x(id, user_id, gen)
ON CONFLICT (id) DO UPDATE SET frontend_id = EXCLUDED.frontend_id, detached_at = NULL
WHERE connections.frontend_id IS NULL AND connections.user_id = EXCLUDED.user_id
  AND connections.resume_gen = EXCLUDED.resume_gen
"""

UPDATE_META = """
UPDATE memberships AS m SET meta = CAST(x.meta AS jsonb)
FROM unnest(CAST(%(ids)s AS text[]), CAST(%(scopes)s AS text[]),
            CAST(%(groups)s AS text[]), CAST(%(metas)s AS text[]))
     AS x(connection_id, scope, group_name, meta)
WHERE m.connection_id = x.connection_id AND m.scope = x.scope
  AND m.group_name = x.group_name
"""

# memberships of its sockets that they do not have (a lost leave)
RECONCILE_LEFT = """
DELETE FROM memberships AS m USING connections AS c
WHERE c.id = m.connection_id AND c.frontend_id = %(frontend)s
  AND c.id = ANY(CAST(%(ids)s AS text[]))
  AND (m.connection_id, m.scope, m.group_name) NOT IN (
      SELECT * FROM unnest(CAST(%(mids)s AS text[]), CAST(%(scopes)s AS text[]),
                           CAST(%(groups)s AS text[])))
"""

# and those they have (a lost join), for sockets whose rows are this frontend's, with the
# metas they hold (a lost update)
RECONCILE_JOINED = """
INSERT INTO memberships (connection_id, scope, group_name, meta)
SELECT x.connection_id, x.scope, x.group_name, CAST(x.meta AS jsonb)
FROM unnest(CAST(%(mids)s AS text[]), CAST(%(scopes)s AS text[]),
            CAST(%(groups)s AS text[]), CAST(%(metas)s AS text[]))
     AS x(connection_id, scope, group_name, meta)
JOIN connections AS c ON c.id = x.connection_id AND c.frontend_id = %(frontend)s
ON CONFLICT (connection_id, scope, group_name) DO UPDATE SET meta = EXCLUDED.meta
  WHERE memberships.meta IS DISTINCT FROM EXCLUDED.meta
"""


def columns(rows: Rows, **names: str) -> dict[str, list[Any]]:
    """Rows as one array per column: ``columns(rows, ids="id")`` → ``{"ids": [...]}``."""
    return {array: [r[key] for r in rows] for array, key in names.items()}


def connect(db: DB, rows: Rows) -> None:
    # unconditional: a resync writing back the rows of sockets this frontend already holds
    db.execute(CONNECT, columns(rows, ids="id", frontends="frontend_id", users="user_id"))


def open_(db: DB, rows: Rows) -> Cursor[Any]:
    """A hello's row, within ``HERALD_MAX_USER_CONNECTIONS`` cluster-wide; the cursor
    returns the ids inserted (once the pipeline has synced)."""
    params = columns(rows, ids="id", frontends="frontend_id", users="user_id",
                     limits="limit")
    db.execute(LOCK_USERS, {"users": sorted(set(params["users"]))})
    return db.execute(OPEN, params)


def disconnect(db: DB, rows: Rows) -> None:
    db.execute(DISCONNECT, columns(rows, ids="id", frontends="frontend_id"))


def detach(db: DB, rows: Rows) -> None:
    db.execute(DETACH, columns(rows, ids="id", frontends="frontend_id"))


def join(db: DB, rows: Rows) -> None:
    db.execute(JOIN, columns([{"meta": None, **r} for r in rows], ids="connection_id",
                             scopes="scope", groups="group", metas="meta"))


def update_meta(db: DB, rows: Rows) -> None:
    """``update``: a membership's new meta (JSON text); the last of a connection's wins."""
    last = {(r["connection_id"], r["scope"], r["group"]): r for r in rows}
    db.execute(UPDATE_META, columns(list(last.values()), ids="connection_id",
                                    scopes="scope", groups="group", metas="meta"))


def leave(db: DB, rows: Rows) -> None:
    db.execute(LEAVE, columns(rows, ids="connection_id", scopes="scope", groups="group"))


def reconcile(db: DB, rows: Rows) -> None:
    """Make the rows of one frontend's sockets what its hub holds (sent by
    ``Frontend._resync_registry``): ``frontend_id``, ``keep`` (ids never to detach: the
    live sockets and those being resumed), ``ids`` and ``users`` of the live sockets, and
    their memberships as ``mids``, ``scopes``, ``groups`` and ``metas`` (JSON text)."""
    for row in rows:
        params = {"frontend": row["frontend_id"], **{k: row[k] for k in (
            "keep", "ids", "users", "gens", "mids", "scopes", "groups")}}
        params["metas"] = row.get("metas") or [None] * len(row["mids"])
        for sql in (RECONCILE_GONE, RECONCILE_LIVE, RECONCILE_LEFT, RECONCILE_JOINED):
            db.execute(sql, params)


#: Kinds that see the whole registry of a frontend: each runs alone, after everything
#: queued before it and before everything queued after (``registry_writer._runs``).
BARRIERS = frozenset({"reconcile"})

#: The statement for each op kind, in the order kinds run within one wave (see
#: ``registry_writer._runs``): what frees a slot or a row before what takes one. One that
#: returns a cursor refuses the rows whose ids the cursor does not return.
APPLY: dict[str, Callable[[DB, Rows], Cursor[Any] | None]] = {
    "disconnect": disconnect,
    "detach": detach,
    "leave": leave,
    "connect": connect,
    "open": open_,
    "join": join,
    "meta": update_meta,
    "reconcile": reconcile,
}
