"""Web UI sign-in sessions in the store (every replica honours them; a restart keeps them),
and the ends told to clients (replicas send each end to a client once).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cc_sessions",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("user", sa.String(200), nullable=False),
        sa.Column("proof", sa.String(128), nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
    )
    op.create_index("cc_sessions_expires", "cc_sessions", ["expires"])
    op.create_table(
        "cc_told",
        sa.Column("user", sa.String(200), primary_key=True),
        sa.Column("client_id", sa.String(200), primary_key=True),
        sa.Column("prompt_id", sa.String(200), primary_key=True),
        sa.Column("created", sa.Float, nullable=False),
    )
    op.create_index("cc_told_created", "cc_told", ["created"])


def downgrade() -> None:
    op.drop_index("cc_told_created", "cc_told")
    op.drop_table("cc_told")
    op.drop_index("cc_sessions_expires", "cc_sessions")
    op.drop_table("cc_sessions")
