"""webhooks: the presence state user.online/offline and group.occupied/vacated move

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 03:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'webhook_state',
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('key', sa.String(length=257), nullable=False),
        sa.Column('state', sa.String(length=8), nullable=False),
        sa.Column('since', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.PrimaryKeyConstraint('kind', 'key', name=op.f('pk_webhook_state')),
    )


def downgrade() -> None:
    op.drop_table('webhook_state')
