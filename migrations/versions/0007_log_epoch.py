"""the log's epoch: a random id that changes whenever the log lost continuity

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 03:10:00

One row (id 1), made here with a random id, so every ``manage.py db upgrade`` leaves an
epoch in place; ``manage.py db new-epoch`` replaces it, and so does a ``TRUNCATE`` of the
log (a trigger). ``service/store/epoch.py`` adds the id sequence's identity to it.
"""
import secrets

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'log_epoch',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('epoch', sa.String(length=64), nullable=False),
        sa.Column('changed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_log_epoch')),
    )
    op.execute(sa.text("INSERT INTO log_epoch (id, epoch) VALUES (1, :e)")
               .bindparams(e=secrets.token_hex(8)))
    op.execute("CREATE FUNCTION log_epoch_renew() RETURNS trigger LANGUAGE plpgsql AS $$ "
               "BEGIN UPDATE log_epoch SET epoch = md5(random()::text || clock_timestamp()"
               "::text)::varchar(16), changed_at = now(); RETURN NULL; END $$")
    op.execute("CREATE TRIGGER messages_truncated_epoch AFTER TRUNCATE ON messages "
               "FOR EACH STATEMENT EXECUTE FUNCTION log_epoch_renew()")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS messages_truncated_epoch ON messages")
    op.execute("DROP FUNCTION IF EXISTS log_epoch_renew()")
    op.drop_table('log_epoch')
