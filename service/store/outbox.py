"""The outbox, for a backend with a database of its own (issue 15, part 1): the backend
writes its message into ``herald_outbox`` in the same transaction as its business write
(``enqueue``), and Herald's relay (``manage.py run relay``, ``service/cluster/relay.py``)
moves committed rows into Herald's log and onto the bus, then deletes them.

The table lives in the backend's database, not in Herald's: ``create_outbox`` (the migration
helper; call it from the backend's own Alembic migration, or once at deploy) makes it,
``outbox_table`` adds it to the backend's ``MetaData`` instead if it keeps one. Enqueueing
needs no connection to Herald at all.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Identity,
    MetaData,
    String,
    Table,
    Text,
    cast,
    func,
    insert,
    literal,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Session

from service.core.envelope import Target, raw_json

#: The outbox table's default name, in the backend's database.
OUTBOX_TABLE = "herald_outbox"
#: Lengths as Herald's log has them (``models.Message``): a row the log cannot take is
#: refused here, in the backend's transaction, not later by the relay.
_KIND_LEN, _KEY_LEN, _EVENT_LEN = 16, 2 * 128 + 1, 128


def outbox_table(metadata: MetaData, name: str = OUTBOX_TABLE) -> Table:
    """The outbox as a ``Table`` in ``metadata``: ids in insert order, a random ``uid`` the
    log's dedupe key is made of (unique even when the table is recreated and its ids start
    again), a target as the log keys it, the event, its JSON data, when it was written."""
    return Table(
        name, metadata,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("uid", UUID(as_uuid=False), server_default=text("gen_random_uuid()"),
               nullable=False),
        Column("target_kind", String(_KIND_LEN), nullable=False),
        Column("target_key", String(_KEY_LEN), nullable=False),
        Column("event", String(_EVENT_LEN), nullable=False),
        Column("data", JSONB),
        Column("created_at", DateTime(timezone=True), server_default=func.now(),
               nullable=False),
    )


def create_outbox(bind: Engine | Connection, name: str = OUTBOX_TABLE) -> Table:
    """Create the outbox table if it is missing (idempotent): ``create_outbox(op.get_bind())``
    in an Alembic ``upgrade()``, or once against the backend's database."""
    table = outbox_table(MetaData(), name)
    table.create(bind, checkfirst=True)
    return table


def enqueue(db: Session | Connection, target: Target, event: str, data: Any = None, *,
            table: Table | None = None) -> int:
    """Write one message into the outbox in ``db``'s transaction (an ORM ``Session`` or a
    Core ``Connection`` on the backend's database); it reaches sockets once the relay moves
    it, after the commit, and never if the transaction rolls back. Returns the outbox id."""
    t = table if table is not None else _DEFAULT
    stmt = insert(t).values(
        target_kind=target.kind, target_key=target.log_key(), event=event,
        data=cast(literal(bytes(raw_json(data)).decode(), Text), JSONB),
    ).returning(t.c.id)
    return int(db.execute(stmt).scalar_one())


_DEFAULT = outbox_table(MetaData())
