"""frontend stats: frontends.stats, the counters and rates a frontend wrote at its heartbeat

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-09 10:00:00

Nullable, no default: adding it rewrites no rows; null until the frontend's first
heartbeat (or a frontend of an older version, which never writes it).
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('frontends', sa.Column('stats', postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column('frontends', 'stats')
