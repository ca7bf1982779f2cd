"""Database engines: one per process, recreated after fork (Celery's prefork children)."""

from __future__ import annotations

import os
import re
import threading

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

_lock = threading.Lock()
_SAFE_NAME = re.compile(r"[A-Za-z0-9_]{1,63}")
_engines: dict[tuple[int, str], Engine] = {}

#: Seconds to wait for a pooled connection before giving up (keeps a DB outage visible).
POOL_TIMEOUT_S = 5.0
#: Seconds after which a pooled connection is replaced.
POOL_RECYCLE_S = 1800
#: Seconds for psycopg to establish a connection.
CONNECT_TIMEOUT_S = 5


def get_engine(url: str, pool_size: int = 4) -> Engine:
    """Return this process's engine for ``url``, creating it on first use after a fork."""
    key = (os.getpid(), url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_timeout=POOL_TIMEOUT_S,
                # a stale connection (Postgres restarted) is replaced before use; the price
                # is a round trip per checkout, which batching (the registry writer) amortises
                pool_pre_ping=True,
                pool_recycle=POOL_RECYCLE_S,
                connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
            )
            _engines[key] = engine
        return engine


def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it is missing; return True when created."""
    target = make_url(url)
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
    target = make_url(url)
    if not target.database or not _SAFE_NAME.fullmatch(target.database):
        raise ValueError(f"unsafe database name: {target.database!r}")
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    finally:
        admin.dispose()
