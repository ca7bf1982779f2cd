"""delivery receipts: sockets written per frontend for receipt-flagged messages

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 03:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'message_receipts',
        sa.Column('message_id', sa.BigInteger(), nullable=False),
        sa.Column('frontend_id', sa.String(length=64), nullable=False),
        sa.Column('sockets', sa.Integer(), server_default='0', nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.PrimaryKeyConstraint('message_id', 'frontend_id', name=op.f('pk_message_receipts')),
    )
    op.create_index(op.f('ix_message_receipts_created_at'), 'message_receipts',
                    ['created_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_message_receipts_created_at'), table_name='message_receipts')
    op.drop_table('message_receipts')
