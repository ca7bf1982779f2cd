"""Cluster-wide presence webhooks and the offline fallback, computed from the registry.

``user.online``/``user.offline`` and ``group.occupied``/``group.vacated``: frontends
enqueue ``presence`` with the users and groups a committed registry batch touched
(``workers/webhook_hooks.py``), the sweeper for dead frontends (``reconcile``). Each
check takes an advisory lock on its key, reads the truth (an attached connection of the
user; an attached member of the group) and moves ``webhook_state``:

- live and no row: "on", send online/occupied (the lock makes two racing checks send one);
- live and "leaving": back to "on", nothing sent (a reload, a resume, a drain's move);
- gone and "on": "leaving" since now, and a final check after ``HERALD_WEBHOOK_FLAP_S``;
- final check, still gone, "leaving" for the whole window: row deleted, offline/vacated.

Events are enqueued before the state commits: a crash between them repeats an event
rather than losing one (at least once, de-duplicated by id).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, text

from service.store.db import get_engine
from workers import undelivered
from workers.celery_app import app, settings
from workers.webhooks import emit

#: Slack on the flap window for a final check that runs a little early (timer skew).
EARLY_S = 0.05
#: Most stale "on" rows one reconcile (a beat) moves to "leaving".
RECONCILE_BATCH = 1000

_LIVE = {
    "user": "SELECT EXISTS (SELECT 1 FROM connections WHERE user_id = :key"
            " AND frontend_id IS NOT NULL)",
    "group": "SELECT EXISTS (SELECT 1 FROM memberships m JOIN connections c"
             " ON c.id = m.connection_id WHERE m.scope = :scope AND m.group_name = :group"
             " AND c.frontend_id IS NOT NULL)",
}
_EVENTS = {"user": ("user.online", "user.offline"),
           "group": ("group.occupied", "group.vacated")}

# "on" rows whose user or group has nothing attached any more: a frontend died (swept),
# drained, or a check was lost
_STALE = """
SELECT w.kind, w.key FROM webhook_state w
WHERE w.state = 'on' AND NOT CASE w.kind
  WHEN 'user' THEN EXISTS (SELECT 1 FROM connections c WHERE c.user_id = w.key
                           AND c.frontend_id IS NOT NULL)
  ELSE EXISTS (SELECT 1 FROM memberships m JOIN connections c ON c.id = m.connection_id
               WHERE m.scope = split_part(w.key, '/', 1)
                 AND m.group_name = substr(w.key, length(split_part(w.key, '/', 1)) + 2)
                 AND c.frontend_id IS NOT NULL) END
LIMIT :n
"""

# a durable message's user has no socket, attached or detached within its resume window
_REACHABLE = """
SELECT EXISTS (SELECT 1 FROM connections WHERE user_id = :user AND (frontend_id IS NOT NULL
               OR detached_at > now() - make_interval(secs => :ttl)))
"""


def _data(kind: str, key: str) -> dict[str, Any]:
    if kind == "user":
        return {"user_id": key}
    scope, group = key.split("/", 1)
    return {"scope": scope, "group": group}


def check(db: Connection, kind: str, key: str, final: bool, flap_s: float,
          send: Callable[[str, dict[str, Any]], None] = emit) -> float | None:
    """One key's transition (see the module), its events given to ``send``; the seconds
    until a final check is due, or None when none is. Runs in the caller's transaction."""
    db.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
               {"k": f"webhook:{kind}:{key}"})
    live = bool(db.execute(text(_LIVE[kind]), {"key": key, **_data(kind, key)}).scalar_one())
    row = db.execute(text("SELECT state, extract(epoch FROM now() - since) FROM webhook_state"
                          " WHERE kind = :kind AND key = :key"),
                     {"kind": kind, "key": key}).first()
    on_event, off_event = _EVENTS[kind]
    if live:
        if row is None:
            send(on_event, _data(kind, key))
            db.execute(text("INSERT INTO webhook_state (kind, key, state) VALUES"
                            " (:kind, :key, 'on')"), {"kind": kind, "key": key})
        elif row[0] == "leaving":  # back within the window: neither event goes out
            db.execute(text("UPDATE webhook_state SET state = 'on' WHERE kind = :kind"
                            " AND key = :key"), {"kind": kind, "key": key})
        return None
    if row is None:
        return None
    if row[0] == "on":
        db.execute(text("UPDATE webhook_state SET state = 'leaving', since = now()"
                        " WHERE kind = :kind AND key = :key"), {"kind": kind, "key": key})
        return flap_s
    if not final:
        return None  # already leaving: its final check is on its way
    left = flap_s - float(row[1])
    if left > EARLY_S:  # it came back and went again since: wait out the rest
        return left
    send(off_event, _data(kind, key))
    db.execute(text("DELETE FROM webhook_state WHERE kind = :kind AND key = :key"),
               {"kind": kind, "key": key})
    return None


def run_checks(engine: Engine, keys: list[tuple[str, str]], final: bool) -> None:
    """Check each key in a transaction of its own; schedule the final checks due."""
    for kind, key in keys:
        with engine.begin() as db:
            due = check(db, kind, key, final, settings.webhook_flap_s)
        if due is not None:
            presence.apply_async(kwargs={"keys": [[kind, key]], "final": True},
                                 countdown=due)


def reconcile(engine: Engine) -> int:
    """Start the flap window of every "on" user or group nothing holds any more (run by
    the sweep, after a dead frontend's connections were detached); how many."""
    with engine.connect() as db:
        stale = [(k, v) for k, v in db.execute(text(_STALE), {"n": RECONCILE_BATCH})]
    run_checks(engine, stale, final=False)
    return len(stale)


@app.task(name="herald.webhook_presence", ignore_result=True)
def presence(keys: list[list[str]], final: bool = False) -> None:
    """Check users ("user", id) and groups ("group", "<scope>/<group>") (module doc)."""
    run_checks(get_engine(settings.database_url, 2, settings.db_tx_idle_timeout_s),
               [(kind, key) for kind, key in keys], final)


@app.task(name=undelivered.TASK, ignore_result=True)
def check_undelivered(items: list[list[Any]]) -> None:
    """``message.undelivered`` for each (message id, user, event) whose user has no
    socket, live or awaiting resume: the offline fallback's trigger."""
    engine = get_engine(settings.database_url, 2, settings.db_tx_idle_timeout_s)
    with engine.connect() as db:
        for message_id, user, event in items:
            if not db.execute(text(_REACHABLE), {"user": user,
                                                 "ttl": settings.history_ttl_s}).scalar_one():
                emit("message.undelivered",
                     {"message_id": message_id, "user_id": user, "event": event})
