"""Replicas on one database: frames too large for a NOTIFY are passed through a table, and
the shared queue is read by replica and by client.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cc_frames",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("client_id", sa.String(200), nullable=False),
        sa.Column("frame", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
    )
    op.create_index("cc_prompts_replica", "cc_prompts", ["replica"])
    op.create_index("cc_prompts_client", "cc_prompts", ["client_id"])


def downgrade() -> None:
    op.drop_index("cc_prompts_client", "cc_prompts")
    op.drop_index("cc_prompts_replica", "cc_prompts")
    op.drop_table("cc_frames")
