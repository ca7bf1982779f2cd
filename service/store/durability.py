"""What each kind of write waits for before its commit returns (``synchronous_commit``).

With a synchronous standby (the primary's ``synchronous_standby_names``), a commit at
``on`` returns once the standby has flushed its WAL, so a standby promoted after the
primary dies has it; at ``local`` it returns once the primary alone has flushed it. Each
write sets its level with ``SET LOCAL`` inside its own transaction, so it holds whatever
the server's default is, and through a transaction-mode pooler (which would drop a
session setting). Writes not named here use the server's default.
"""

from __future__ import annotations

from sqlalchemy import Connection

#: The durable log. A 202 with an id (an ack with an id, a task's outcome) promises that
#: the message outlives a failover: ``on`` waits for the standby's flush, which is what
#: promotion replays. ``remote_apply`` would also wait for the standby to apply it, which
#: only readers of the standby need, and Herald reads the primary only.
LOG = "on"

#: The registry writes of sockets (open, join, leave, disconnect; registry_writer). The
#: frontend holding the sockets is their truth and writes them all again when it finds a
#: different server (``Frontend._watch_server``), so a failover that loses the last few
#: costs nothing lasting. Not waiting for the standby keeps hello and join at the
#: primary's latency, and working while the standby is away (an ``on`` commit waits for
#: it). ``local`` rather than ``off``: a plain restart of the primary loses none of them.
REGISTRY = "local"

_LEVELS = frozenset({"on", "off", "local", "remote_write", "remote_apply"})


def statement(level: str) -> str:
    """The ``SET LOCAL`` for ``level`` (for a raw psycopg pipeline)."""
    if level not in _LEVELS:
        raise ValueError(f"not a synchronous_commit level: {level!r}")
    return f"SET LOCAL synchronous_commit = {level}"


def commit_at(db: Connection, level: str) -> None:
    """Make the caller's transaction (open, or begun by this statement) commit at
    ``level``."""
    db.exec_driver_sql(statement(level))
