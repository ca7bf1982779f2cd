"""Periodic maintenance run by celery beat: sweep dead frontends, keep the log's
partitions (made ahead, dropped when expired)."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import Engine, delete, func, select

from service.store import partitions, receipts
from service.store.db import get_engine
from service.store.models import ConnectionRecord, FrontendRecord
from service.store.registry import detach_frontends, memberships_of_frontends
from workers.celery_app import app, settings

log = logging.getLogger(__name__)

#: A frontend silent for this many heartbeats is dead.
MISSED_HEARTBEATS = 3


def sweep_dead_frontends(engine: Engine, heartbeat_s: float) -> list[dict[str, str]]:
    """Delete frontends silent for three heartbeats, in one transaction.

    Returns the memberships removed with them, so presence leaves can be published.
    """
    cutoff = func.now() - timedelta(seconds=MISSED_HEARTBEATS * heartbeat_s)
    with engine.begin() as db:
        dead = db.execute(select(FrontendRecord.id).where(FrontendRecord.heartbeat_at < cutoff)
                          .with_for_update(skip_locked=True)).scalars().all()
        if not dead:
            return []
        removed = memberships_of_frontends(db, list(dead))
        detach_frontends(db, list(dead))  # their clients may resume elsewhere
        db.execute(delete(FrontendRecord).where(FrontendRecord.id.in_(dead)))
    log.warning("swept dead frontends %s (%d memberships)", dead, len(removed))
    return removed


@app.task(name="herald.sweep_frontends", ignore_result=True)
def sweep_frontends() -> int:
    """Beat task: sweep dead frontends and publish a presence leave per membership; with
    webhooks, start the flap window of every user and group that has nothing attached
    any more (the swept frontend's, a drained one's), so none loses its offline event."""
    from workers.presence import publish_leaves

    engine = get_engine(settings.database_url, 2, settings.db_tx_idle_timeout_s)
    removed = sweep_dead_frontends(engine, settings.heartbeat_s)
    publish_leaves(removed)
    if settings.webhook_urls:
        from workers.webhook_presence import reconcile

        reconcile(engine)
    return len(removed)


@app.task(name="herald.prune_log", ignore_result=True)
def prune_log() -> int:
    """Beat task: keep the durable log's day partitions made ahead and drop those older
    than HERALD_HISTORY_TTL (whole partitions: ``store/partitions.py``), idempotency keys
    older than HERALD_IDEMPOTENCY_TTL, and delete
    detached connections nobody resumed in that time. Returns the partitions dropped."""
    engine = get_engine(settings.database_url, 2, settings.db_tx_idle_timeout_s)
    made, dropped = partitions.maintain(engine, settings.history_ttl_s,
                                        idempotency_ttl_s=settings.idempotency_ttl_s)
    if made or dropped:
        log.info("log partitions: made %s, dropped %s", made, dropped)
    receipts.prune(engine, settings.history_ttl_s)
    cutoff = func.now() - timedelta(seconds=settings.history_ttl_s)
    with engine.begin() as db:
        db.execute(delete(ConnectionRecord).where(ConnectionRecord.detached_at < cutoff))
    return len(dropped)
