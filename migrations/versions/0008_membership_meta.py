"""presence meta: memberships.meta, the JSON a member joined with (or last updated to)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 03:20:00

Nullable, no default: adding it rewrites no rows, and a null reads as ``{}``.
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('memberships', sa.Column('meta', postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column('memberships', 'meta')
