"""resume tokens work once: a generation per connection

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 20:05:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # existing rows start at generation 0, which is what tokens issued before this
    # migration lack: they no longer resume (the client falls back to a fresh session)
    op.add_column('connections', sa.Column('resume_gen', sa.Integer(), server_default='0',
                                           nullable=False))


def downgrade() -> None:
    op.drop_column('connections', 'resume_gen')
