"""the durable log partitioned by day; dedupe keys in their own table

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:00:00

An existing log is moved: the flat table is renamed, the partitioned one created with the
same columns (ids keep coming from the same sequence), a partition made for every day the
old rows span and for the next days, the rows copied, and the flat table dropped. It runs
in the migration's one transaction, so a failure leaves the log as it was.
"""
from datetime import UTC, date, datetime, timedelta

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

#: Days of partitions made ahead of today (service.store.partitions.AHEAD_DAYS).
AHEAD_DAYS = 3


def _create_day(day: date) -> None:
    lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
    op.execute(f"CREATE TABLE messages_p{day:%Y%m%d} PARTITION OF messages FOR VALUES FROM "
               f"('{lo.isoformat()}') TO ('{(lo + timedelta(days=1)).isoformat()}')")


def _message_columns(*extra: sa.Column) -> list[sa.Column]:
    """The log's columns in both shapes (the flat one adds ``dedupe_key``)."""
    return [
        sa.Column('id', sa.BigInteger(), server_default=sa.text("nextval('messages_id_seq')"),
                  nullable=False),
        sa.Column('target_kind', sa.String(length=16), nullable=False),
        sa.Column('target_key', sa.String(length=257), nullable=False),
        sa.Column('event', sa.String(length=128), nullable=False),
        sa.Column('data', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('origin', sa.String(length=64), nullable=False),
        *extra,
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
    ]


def upgrade() -> None:
    op.execute("ALTER TABLE messages RENAME TO messages_flat")
    op.execute("ALTER TABLE messages_flat RENAME CONSTRAINT pk_messages TO pk_messages_flat")
    op.execute("ALTER TABLE messages_flat RENAME CONSTRAINT uq_messages_dedupe_key "
               "TO uq_messages_flat_dedupe_key")
    op.execute("ALTER INDEX ix_messages_created_at RENAME TO ix_messages_flat_created_at")
    op.execute("ALTER INDEX ix_messages_target RENAME TO ix_messages_flat_target")
    op.execute("ALTER SEQUENCE messages_id_seq OWNED BY NONE")
    op.create_table(
        'messages',
        *_message_columns(),
        sa.PrimaryKeyConstraint('id', 'created_at', name=op.f('pk_messages')),
        postgresql_partition_by='RANGE (created_at)')
    op.execute("ALTER SEQUENCE messages_id_seq OWNED BY messages.id")
    op.create_index(op.f('ix_messages_created_at'), 'messages', ['created_at'], unique=False)
    op.create_index('ix_messages_target', 'messages', ['target_kind', 'target_key', 'id'],
                    unique=False)
    op.execute("CREATE TABLE messages_default PARTITION OF messages DEFAULT")
    bind = op.get_bind()
    days = {d for (d,) in bind.execute(sa.text(
        "SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM messages_flat"))}
    today = datetime.now(UTC).date()
    days |= {today + timedelta(days=n) for n in range(AHEAD_DAYS + 1)}
    for day in sorted(days):
        _create_day(day)
    op.execute("INSERT INTO messages (id, target_kind, target_key, event, data, origin, "
               "created_at) SELECT id, target_kind, target_key, event, data, origin, "
               "created_at FROM messages_flat")
    op.create_table(
        'message_keys',
        sa.Column('key', sa.String(length=255), nullable=False),
        sa.Column('message_id', sa.BigInteger(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_message_keys')))
    op.create_index(op.f('ix_message_keys_created_at'), 'message_keys', ['created_at'],
                    unique=False)
    op.execute("INSERT INTO message_keys (key, message_id, created_at) SELECT dedupe_key, "
               "id, created_at FROM messages_flat WHERE dedupe_key IS NOT NULL")
    op.execute("DROP TABLE messages_flat")


def downgrade() -> None:
    op.execute("ALTER TABLE messages RENAME TO messages_parted")
    op.execute("ALTER TABLE messages_parted RENAME CONSTRAINT pk_messages "
               "TO pk_messages_parted")
    op.execute("ALTER INDEX ix_messages_created_at RENAME TO ix_messages_parted_created_at")
    op.execute("ALTER INDEX ix_messages_target RENAME TO ix_messages_parted_target")
    op.execute("ALTER SEQUENCE messages_id_seq OWNED BY NONE")
    op.create_table(
        'messages',
        *_message_columns(sa.Column('dedupe_key', sa.String(length=255), nullable=True)),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_messages')),
        sa.UniqueConstraint('dedupe_key', name=op.f('uq_messages_dedupe_key')))
    op.execute("ALTER SEQUENCE messages_id_seq OWNED BY messages.id")
    op.create_index(op.f('ix_messages_created_at'), 'messages', ['created_at'], unique=False)
    op.create_index('ix_messages_target', 'messages', ['target_kind', 'target_key', 'id'],
                    unique=False)
    op.execute("INSERT INTO messages (id, target_kind, target_key, event, data, origin, "
               "dedupe_key, created_at) SELECT m.id, m.target_kind, m.target_key, m.event, "
               "m.data, m.origin, k.key, m.created_at FROM messages_parted m "
               "LEFT JOIN message_keys k ON k.message_id = m.id")
    op.drop_table('message_keys')
    op.execute("DROP TABLE messages_parted")  # and its partitions
