"""Database engines: one per process, recreated after fork (Celery's prefork children).

``HERALD_DATABASE_URL`` may name several servers, a primary and its standbys, so that a
promotion is followed without a restart: libpq tries them in order and keeps the first
that takes writes (``target_session_attrs=read-write``, added when the URL does not say):

    postgresql+psycopg://user@/herald?host=db1:5432&host=db2:5432&target_session_attrs=read-write
    postgresql+psycopg://user@/herald?host=db1,db2&port=5432,5432   (libpq's own form; IPv6)

Connections to a server that died fail their pre-ping and are replaced; one that finds
its server read-only (fenced or demoted) is dropped like a dead one (``_fail_over``).
"""

from __future__ import annotations

import os
import re
import threading

from sqlalchemy import URL, Engine, create_engine, event, text
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

_lock = threading.Lock()
_SAFE_NAME = re.compile(r"[A-Za-z0-9_]{1,63}")
_engines: dict[tuple[int, str, float], Engine] = {}

#: Seconds to wait for a pooled connection before giving up (keeps a DB outage visible).
POOL_TIMEOUT_S = 5.0
#: Seconds after which a pooled connection is replaced.
POOL_RECYCLE_S = 1800
#: Seconds for psycopg to establish a connection, per host of a multi-host URL.
CONNECT_TIMEOUT_S = 5
#: Default of HERALD_DB_TX_IDLE_TIMEOUT: Postgres ends a session that stays this long
#: inside a transaction without a statement, or with data its client does not acknowledge.
#: A frontend cut off between a write and its COMMIT otherwise holds that write's row
#: locks until TCP gives up (hours): its own registry row among them, which the sweep
#: (``FOR UPDATE SKIP LOCKED``) then skips, so its clients' rows stay taken. Herald's
#: transactions run their statements back to back, far below this.
TX_IDLE_TIMEOUT_S = 10.0
#: Every Herald role writes: a session on a standby would fail at its first write, so
#: libpq skips servers that do not take writes (unless the URL asks for something else).
SESSION_ATTRS = "read-write"
#: SQLSTATEs saying this session's server takes no writes (read_only_sql_transaction):
#: it was fenced or demoted under the connection; the primary is elsewhere now.
READ_ONLY_STATES = frozenset({"25006"})


def engine_url(url: str | URL) -> URL:
    """``url`` as Herald connects to it: ``target_session_attrs=read-write`` unless the
    URL sets it. Every host of a multi-host URL is kept, whichever form it uses."""
    target = make_url(url)
    if "target_session_attrs" not in target.query:
        target = target.update_query_dict({"target_session_attrs": SESSION_ATTRS})
    return target


def is_read_only(exc: BaseException | None) -> bool:
    """True for a DBAPI error meaning the server reached takes no writes."""
    return getattr(exc, "sqlstate", None) in READ_ONLY_STATES


def _fail_over(ctx: ExceptionContext) -> BaseException | None:
    """A write refused as read-only is an outage of the primary, not a bug: drop this
    connection (and, as for any disconnect, the pool's older ones) so the next one finds
    the server that takes writes, and raise it as OperationalError (HTTP 503, retry)."""
    if not is_read_only(ctx.original_exception):
        return None
    ctx.is_disconnect = True
    return OperationalError(ctx.statement, ctx.parameters, ctx.original_exception)


def session_options(tx_idle_timeout_s: float) -> str:
    """The libpq ``options`` that make the server end a stalled session (see
    ``TX_IDLE_TIMEOUT_S``; 0: none)."""
    if not tx_idle_timeout_s:
        return ""
    ms = max(1, round(tx_idle_timeout_s * 1000))
    return f"-c idle_in_transaction_session_timeout={ms} -c tcp_user_timeout={ms}"


def get_engine(url: str, pool_size: int = 4,
               tx_idle_timeout_s: float = TX_IDLE_TIMEOUT_S) -> Engine:
    """Return this process's engine for ``url``, creating it on first use after a fork."""
    key = (os.getpid(), url, tx_idle_timeout_s)
    options = session_options(tx_idle_timeout_s)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = create_engine(
                engine_url(url),
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_timeout=POOL_TIMEOUT_S,
                # a stale connection (Postgres restarted) is replaced before use; the price
                # is a round trip per checkout, which batching (the registry writer) amortises
                pool_pre_ping=True,
                pool_recycle=POOL_RECYCLE_S,
                connect_args={"connect_timeout": CONNECT_TIMEOUT_S,
                              **({"options": options} if options else {})},
            )
            event.listen(engine, "handle_error", _fail_over)
            _engines[key] = engine
        return engine


def server_instance(engine: Engine) -> str:
    """Which server ``engine`` reaches now, as the start time of its postmaster: it
    changes with a failover (and a restart)."""
    with engine.connect() as db:
        return str(db.execute(text("SELECT pg_postmaster_start_time()")).scalar_one())


def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it is missing; return True when created.
    With a multi-host URL it is created on the server that takes writes."""
    target = engine_url(url)
    name = target.database
    if not name or not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"unsafe or missing database name in the URL: {name!r}")
    probe = create_engine(target, poolclass=NullPool)
    try:  # it exists and we may use it: no need for the maintenance database at all
        with probe.connect():
            return False
    except OperationalError:
        pass
    finally:
        probe.dispose()
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar()
            if exists:
                return False
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            return True
    finally:
        admin.dispose()


def drop_database(url: str) -> None:
    """Drop the database named in ``url`` (tests' clean-up), ending its sessions first."""
    target = engine_url(url)
    if not target.database or not _SAFE_NAME.fullmatch(target.database):
        raise ValueError(f"unsafe database name: {target.database!r}")
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    finally:
        admin.dispose()
